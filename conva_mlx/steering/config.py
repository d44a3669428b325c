"""What to steer and how: targets, the steering configuration, decoding options."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from conva_mlx.errors import ConvaError
from conva_mlx.probes.recipe import DIRECTIONS, Direction, check_p0
from conva_mlx.values import check_value, load_values

# calibrated (the default): the gated push a pack's calibration sized by measurement; conva:
# the paper's minimal probe push; caa: the mean difference x a coefficient; ica: a prompt.
Method = Literal["calibrated", "conva", "caa", "ica", "none"]
DEFAULT_METHOD: Method = "calibrated"
MAX_STRENGTH = 8.0
GATED_METHODS = ("conva", "calibrated")  # CAA stays the ungated baseline
Mode = Literal["prompt", "token"]
Probes = Literal["controlled", "uncontrolled"]
# Where prompt mode adds its delta: every position (the reference), or only from the
# prompt's last token on (the positions that produce the reply).
Positions = Literal["all", "generated"]
METHODS: tuple[str, ...] = get_args(Method)
MODES: tuple[str, ...] = get_args(Mode)
POSITIONS: tuple[str, ...] = get_args(Positions)


def check_calibrated_strength(strength: float, name: str = "--strength") -> None:
    """The one bound on a calibrated push's strength in eval and choices, where 0 (no push)
    is a method of its own (`none`)."""
    if not 0 < strength <= MAX_STRENGTH:  # also refuses NaN
        raise ConvaError(f"{name} must be in (0, {MAX_STRENGTH:g}] (1 = the calibrated "
                         f"push), got {strength:g}")


@dataclass(frozen=True)
class Target:
    """One value to steer: toward it (P >= p0) or away from it (P <= 1 - p0).

    p0 is the level the value should reach: ConVA's probe probability, or for the
    calibrated method the share of held-out dilemmas that should favour the value."""

    value: str
    p0: float | None = None  # None = the pack's default (calibrated: its calibrated strength)
    away: bool = False

    def __post_init__(self) -> None:
        check_value(self.value)
        if self.p0 is not None:
            check_p0(self.p0)

    @classmethod
    def parse(cls, spec: str, away: bool = False) -> Target:
        """'benevolence' or 'benevolence:0.97'."""
        name, _, p = spec.partition(":")
        p0 = None
        if p:
            try:
                p0 = float(p)
            except ValueError as exc:
                raise ConvaError(f"bad strength '{p}' in '{spec}' (use e.g. {name}:0.95)") from exc
        return cls(name.strip(), p0, away)


TargetSpec = Target | str


def parse_targets(specs: TargetSpec | Sequence[TargetSpec]) -> list[Target]:
    """Targets from Target objects and/or 'value[:p0]' strings (one string or a list)."""
    items = [specs] if isinstance(specs, (str, Target)) else list(specs)
    return [t if isinstance(t, Target) else Target.parse(t) for t in items]


@dataclass(init=False)
class SteerConfig:
    """How to steer. `targets` takes Target objects or strings such as 'benevolence:0.97'."""

    targets: list[Target]
    method: Method
    mode: Mode
    gate: bool
    probes: Probes  # uncontrolled = probes from the uncontrolled pairs (the ablation)
    caa_coef: float
    negative_prompt: bool  # prepend "You have low level of {value}..."
    layers: list[int] | None  # override the pack's per-value layers
    direction: Direction | None  # ConVA's delta direction; None = the pack recipe's
    positions: Positions  # prompt mode: where the delta is added
    # calibrated: 1 = the calibrated push (a target's level overrides it); None = the pack's
    # default (its calibration's `strength`, else 1)
    strength: float | None
    # Also put ICA's instruction before the question, only where the gate opens (the
    # readers found instruction + push ahead of either alone; the instrument cannot see it).
    # None: the pack's default (its calibration's `instruct`, for the calibrated method).
    instruct: bool | None

    def __init__(self, targets: TargetSpec | Sequence[TargetSpec] = (),
                 method: Method = DEFAULT_METHOD,
                 mode: Mode = "prompt", gate: bool = True, probes: Probes = "controlled",
                 caa_coef: float = 1.0, negative_prompt: bool = False,
                 layers: list[int] | None = None, direction: Direction | None = None,
                 positions: Positions = "all", strength: float | None = None,
                 instruct: bool | None = None) -> None:
        self.targets = parse_targets(targets)
        self.method, self.mode, self.gate, self.probes = method, mode, gate, probes
        self.caa_coef, self.negative_prompt, self.layers = caa_coef, negative_prompt, layers
        self.direction, self.positions = direction, positions
        self.strength, self.instruct = strength, instruct
        if instruct and method not in GATED_METHODS:
            raise ConvaError(f"the instruction goes with a gated push (method "
                             f"{' or '.join(GATED_METHODS)}), not with method {method}")
        if strength is not None and not 0 <= strength <= MAX_STRENGTH:  # also refuses NaN
            raise ConvaError(f"strength must be in [0, {MAX_STRENGTH:g}], got {strength}")
        if positions not in POSITIONS:
            raise ConvaError(f"unknown positions '{positions}' (choose from "
                             f"{', '.join(POSITIONS)})")
        if positions != "all" and mode == "token":
            raise ConvaError("positions 'generated' is a prompt-mode setting (token mode "
                             "steers every position with its own delta)")
        if direction is not None and direction not in DIRECTIONS:
            raise ConvaError(f"unknown direction '{direction}' (choose from "
                             f"{', '.join(DIRECTIONS)})")
        if method not in METHODS:
            raise ConvaError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
        if mode not in MODES:
            raise ConvaError(f"unknown mode '{mode}' (choose from {', '.join(MODES)})")
        toward = {t.value for t in self.targets if not t.away}
        both = sorted(toward & {t.value for t in self.targets if t.away})
        if both:
            raise ConvaError(f"cannot steer both toward and away from {', '.join(both)}")


MAX_REPETITION_PENALTY = 2.0


@dataclass
class GenOptions:
    max_tokens: int = 200
    temp: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    # > 1 makes recently generated tokens less likely (1 = off: the evaluation default)
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConvaError(f"max tokens must be at least 1, got {self.max_tokens}")
        if not self.temp >= 0:  # also refuses NaN
            raise ConvaError(f"temperature must be >= 0, got {self.temp}")
        if not 0 < self.top_p <= 1:
            raise ConvaError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not 0 <= self.seed < 1 << 64:  # MLX's seed range
            raise ConvaError(f"seed must be in [0, 2^64), got {self.seed}")
        if not 1.0 <= self.repetition_penalty <= MAX_REPETITION_PENALTY:
            raise ConvaError(f"repetition penalty must be in [1, {MAX_REPETITION_PENALTY:g}] "
                             f"(1 = off), got {self.repetition_penalty}")


def ica_prefix(value: str, low: bool = False) -> str:
    """ICA's instruction: "You have high (low) level of {value}. {Value} means ..."."""
    v = load_values()[value]
    level = "low" if low else "high"
    return f"You have {level} level of {value}. {v.title} means {v.definition}."


def ica_instruction(targets: Sequence[Target]) -> str:
    """ICA's instruction for every target (low for values steered away from)."""
    return " ".join(ica_prefix(t.value, low=t.away) for t in targets)


# Chat and serve decode greedily with a repetition penalty by default: plain greedy decoding
# falls into loops on small models (docs/evaluation.md, "Chat sampling"); evaluation stays
# plain greedy (GenOptions()).
CHAT_SAMPLING = GenOptions(max_tokens=400, temp=0.0, top_p=1.0, repetition_penalty=1.2)
