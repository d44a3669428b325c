"""Extraction recipes: the choices that size ConVA's perturbation, named and recorded.

A recipe says how the probes are fitted (raw or standardised features, regularisation C),
where the probe sentences are read (raw text or a chat-templated user turn), which blocks
are steered (a fixed middle block scaled to the depth, or the blocks whose probes are
accurate), the default P0 per value, and the direction the delta moves along. Every pack
records its recipe in pack.json and its model card; packs from before recipes existed
were made with `accuracy`.

`paper` follows the reference implementation (github hr-jin/ConVA): train_cav.py fits
sklearn's LogisticRegression with its defaults (L2, C = 1) on raw last-token activations;
scripts/run_cav.sh steers blocks 10-25 of Llama's 32 (8-23 of Qwen2.5-7B's 28, 15-36 of
Qwen2.5-14B's 48: about 30% to 80% of the depth) with per-value P0 (Llama-2-7b-chat);
src/cav_gen.py moves along w (eps / |w| times the raw coefficient vector), which is the
minimal perturbation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from conva_mlx.errors import ConvaError

LayerRule = Literal["accuracy", "middle-block"]
Fit = Literal["standardised", "raw"]
# probe: along w (the minimal perturbation); mean-diff: along the unit mean difference of
# the pair states (CAA's direction), sized so the probe reads P0.
Direction = Literal["probe", "mean-diff"]
DIRECTIONS: tuple[str, ...] = get_args(Direction)
LAYER_RULES: tuple[str, ...] = get_args(LayerRule)
FITS: tuple[str, ...] = get_args(Fit)
P0_RANGE = "[0.5, 1)"


def check_p0(p0: Any, what: str = "strength P0") -> float:
    """The one rule for a target probability P0, wherever it comes from (a pack's
    default_p0, a recipe, --p0, a request): a number in [0.5, 1). Toward a value means
    P >= P0 and away means P <= 1 - P0, so P0 below 0.5 would swap the two."""
    ok = (not isinstance(p0, bool) and isinstance(p0, (int, float))
          and 0.5 <= p0 < 1.0)  # also refuses NaN
    if not ok:
        raise ConvaError(f"{what} must be in {P0_RANGE}, got {p0}")
    return float(p0)

# scripts/run_cav.sh, Llama-2-7b-chat: without a prompt, and with "You have low level of ...".
PAPER_P0 = {"achievement": 0.97, "stimulation": 0.93, "hedonism": 0.88,
            "self-direction": 0.95, "power": 0.90, "security": 0.975, "tradition": 0.92,
            "conformity": 0.88, "benevolence": 0.91, "universalism": 0.92}
PAPER_P0_NEGATIVE = {"achievement": 0.93, "stimulation": 0.91, "hedonism": 0.83,
                     "self-direction": 0.91, "power": 0.90, "security": 0.90,
                     "tradition": 0.92, "conformity": 0.70, "benevolence": 0.85,
                     "universalism": 0.95}


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    layers: LayerRule = "accuracy"
    block: tuple[float, float] = (0.3, 0.8)  # middle-block: fractions of the depth
    fit: Fit = "standardised"
    c: float | None = 1.0  # None: chosen per block by held-out log-loss
    chat_template: bool = False  # read probe sentences as chat-templated user turns
    direction: Direction = "probe"
    p0: Mapping[str, float] = field(default_factory=dict)  # missing values: default_p0
    p0_negative: Mapping[str, float] = field(default_factory=dict)
    default_p0: float = 0.95

    def __post_init__(self) -> None:
        where = f"recipe {self.name}"
        for key, allowed in (("direction", DIRECTIONS), ("layers", LAYER_RULES),
                             ("fit", FITS)):
            if getattr(self, key) not in allowed:
                raise ConvaError(f"{where}: unknown {key} {getattr(self, key)!r} (choose "
                                 f"from {', '.join(allowed)})")
        if not (isinstance(self.block, tuple) and len(self.block) == 2
                and all(_is_number(x) for x in self.block)
                and 0.0 <= self.block[0] < self.block[1] <= 1.0):
            raise ConvaError(f"{where}: block {self.block} must be two numbers with "
                             "0 <= start < end <= 1")
        if self.c is not None and not (_is_number(self.c) and self.c > 0):
            raise ConvaError(f"{where}: c must be a positive number or null, got {self.c}")
        if not isinstance(self.chat_template, bool):
            raise ConvaError(f"{where}: chat_template must be true or false")
        check_p0(self.default_p0, f"{where}: default_p0")
        for key in ("p0", "p0_negative"):
            table = getattr(self, key)
            if not isinstance(table, Mapping):
                raise ConvaError(f"{where}: {key} must map value names to P0")
            for value, p0 in table.items():
                check_p0(p0, f"{where}: {key} of {value}")

    def p0_for(self, value: str, negative_prompt: bool = False) -> float:
        table = self.p0_negative if negative_prompt and self.p0_negative else self.p0
        return float(table.get(value, self.default_p0))

    def middle_block(self, num_layers: int) -> list[int]:
        """Blocks from round(lo * depth) to round(hi * depth) - 1: 10-25 of 32, 9-23 of 30."""
        start = round(self.block[0] * num_layers)
        end = max(start + 1, round(self.block[1] * num_layers))
        return list(range(start, min(end, num_layers)))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["block"] = list(self.block)
        out["p0"], out["p0_negative"] = dict(self.p0), dict(self.p0_negative)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: str) -> Recipe:
        try:
            fields = dict(obj)
            block = fields.get("block", (0.3, 0.8))
            fields["block"] = tuple(block) if isinstance(block, list) else block
            known = {k: v for k, v in fields.items() if k in cls.__dataclass_fields__}
            if not isinstance(known.get("name", ""), str):
                raise ConvaError("name must be a string")
            return cls(**known)
        except (TypeError, ValueError, ConvaError) as exc:
            raise ConvaError(f"{where}: bad recipe ({exc})") from exc


def _is_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


ACCURACY = Recipe(
    "accuracy",
    "conva-mlx 0.1: probes on standardised features mapped back to raw space; steer the "
    "blocks whose held-out accuracy >= 0.9 (the last 5 excluded), else the 3 best middle "
    "blocks; P0 0.95 for every value.")
PAPER = Recipe(
    "paper",
    "the reference (hr-jin/ConVA): raw-feature LogisticRegression (L2, C = 1); steer the "
    "middle block 30%-80% of the depth; the reference's per-value P0.",
    layers="middle-block", fit="raw", p0=PAPER_P0, p0_negative=PAPER_P0_NEGATIVE)
TEMPLATED = Recipe(
    "templated",
    "the paper recipe with probes read where they are applied: probe sentences captured as "
    "chat-templated user turns, at the template's last token (where steering reads e).",
    layers="middle-block", fit="raw", chat_template=True)
MEAN_DIFF = Recipe(
    "mean-diff",
    "templated probes; the delta moves along the unit mean difference of the pair states "
    "(CAA's direction), sized so the probe reads P0: eps = gap / (w . d).",
    layers="middle-block", fit="raw", chat_template=True, direction="mean-diff")

RECIPES: dict[str, Recipe] = {r.name: r for r in (ACCURACY, PAPER, TEMPLATED, MEAN_DIFF)}
DEFAULT_RECIPE = "accuracy"
LEGACY_RECIPE = ACCURACY  # what packs without a recorded recipe were made with


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConvaError(f"unknown recipe '{name}' (choose from {', '.join(RECIPES)})")
    return RECIPES[name]

