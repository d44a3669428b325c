"""What one evaluation run is asked to do (`EvalOptions`) and what it runs with
(`EvalContext`): the model session, the output folder, the judge."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conva_mlx.data.dataset import ValueData
from conva_mlx.errors import ConvaError
from conva_mlx.evaluation.items import Split
from conva_mlx.evaluation.judges import Judge
from conva_mlx.evaluation.methods import EVAL_METHODS, steer_config
from conva_mlx.packs.pack import Pack
from conva_mlx.probes.recipe import Direction, check_p0
from conva_mlx.steering import GenOptions, SteerConfig, SteeringSession
from conva_mlx.steering.config import (
    CHAT_SAMPLING,
    Mode,
    Positions,
    check_calibrated_strength,
)
from conva_mlx.steering.hooks import default_strength


@dataclass
class EvalOptions:
    values: list[str]
    methods: list[str] = field(default_factory=lambda: list(EVAL_METHODS))
    negative_prompt: bool = False
    n: int | None = None
    prompts_file: Path | None = None
    max_tokens: int = 64
    p0: float | None = None  # ConVA strength for every value; None = the pack's defaults
    caa_coef: float = 1.0  # CAA strength (multiplies the mean-difference vectors)
    # the calibrated methods' strength (1 = the calibrated push); None = the pack's default,
    # what users get (0.5 on Qwen2.5-0.5B)
    strength: float | None = None
    batch_size: int = 16  # prompts decoded together (1 = one at a time)
    temp: float = 0.0
    seed: int | None = None
    # decode as the chat and the server do, so eval reads what users get (1 = off)
    repetition_penalty: float = CHAT_SAMPLING.repetition_penalty
    general: bool = True
    mcq_n: int | None = None
    show_progress: bool = True
    split: Split = "test"
    mode: Mode | None = None  # ConVA's mode; None = prompt
    direction: Direction | None = None  # ConVA's delta direction; None = the pack's recipe
    positions: Positions | None = None  # prompt mode: where the delta goes; None = all

    def check(self) -> None:
        """Refuse bad settings in one line, before any model is loaded."""
        if not self.values:
            raise ConvaError("choose at least one value")
        if not self.methods:
            raise ConvaError("choose at least one method")
        self.generation()
        if self.n is not None and self.n < 1:
            raise ConvaError("--n must be at least 1")
        if self.p0 is not None:
            check_p0(self.p0, "--p0")
        if self.strength is not None:
            check_calibrated_strength(self.strength)
        if self.batch_size < 1:
            raise ConvaError("--batch-size must be at least 1")
        if self.mcq_n is not None and self.mcq_n < 1:
            raise ConvaError("--mcq-n must be at least 1")

    def strength_for(self, pack: Pack) -> float:
        """The calibrated methods' strength: as given, else the pack's default."""
        return default_strength(pack) if self.strength is None else self.strength

    def generation(self) -> GenOptions:
        return GenOptions(max_tokens=self.max_tokens, temp=self.temp, seed=self.seed,
                          repetition_penalty=self.repetition_penalty)

    def conva_p0(self, pack: Pack, value: str) -> float | None:
        """--p0 if given; under the negative prompt, the recipe's P0 for that setting."""
        if self.p0 is not None:
            return self.p0
        if self.negative_prompt and pack.recipe.p0_negative:
            return pack.recipe.p0_for(value, negative_prompt=True)
        return None

    def config(self, method: str, value: str, pack: Pack) -> SteerConfig:
        """The steering of `method` for `value` in the replies."""
        return steer_config(method, value, self.negative_prompt, self.conva_p0(pack, value),
                            self.caa_coef, self.mode, self.direction, self.positions,
                            self.strength)

    def mcq_config(self, method: str, value: str) -> SteerConfig:
        """The steering of `method` for `value` on general-ability questions (no negative
        prompt, CAA at x1)."""
        return steer_config(method, value, p0=self.p0, mode=self.mode,
                            direction=self.direction, positions=self.positions,
                            strength=self.strength)


@dataclass
class EvalContext:
    session: SteeringSession
    out: Path
    judge_factory: Callable[[], Judge]
    pack_path: Path | None = None
    data: ValueData = field(default_factory=ValueData)
    on_generation: Callable[[int], None] | None = None  # called after each saved generation

    @property
    def pack(self) -> Pack:
        if self.session.pack is None:
            raise ConvaError("eval needs a pack")
        return self.session.pack


def generation_settings(ctx: EvalContext, opts: EvalOptions) -> dict[str, Any]:
    """What the saved generations depend on (beyond their key)."""
    lm = ctx.session.lm
    return {"model_fingerprint": lm.fingerprint, "pack_sha256": ctx.pack.digest(),
            "max_tokens": opts.max_tokens, "temp": opts.temp, "seed": opts.seed,
            "repetition_penalty": opts.repetition_penalty,
            "p0": opts.p0, "caa_coef": opts.caa_coef,
            "strength": opts.strength_for(ctx.pack),
            "mode": opts.mode,
            "direction": opts.direction, "positions": opts.positions}
