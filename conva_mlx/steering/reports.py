"""What a steered generation reports: the gate's decision and each steered block's change."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conva_mlx.steering.config import Target


@dataclass
class LayerReport:
    index: int
    p_before: dict[str, float]
    p_after: dict[str, float]
    delta_norm: float
    min_p_after: dict[str, float] = field(default_factory=dict)  # token mode: over tokens

    def as_dict(self, first: str | None) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index, "delta_norm": round(self.delta_norm, 6)}
        if first is not None and first in self.p_before:
            d["p_before"] = round(self.p_before[first], 6)
            d["p_after"] = round(self.p_after[first], 6)
        d["per_value"] = {v: {"p_before": round(self.p_before[v], 6),
                              "p_after": round(self.p_after[v], 6),
                              **({"min_p_after": round(self.min_p_after[v], 6)}
                                 if v in self.min_p_after else {})}
                          for v in self.p_before}
        return d

@dataclass
class GateReport:
    score: float | None
    open: bool
    threshold: float | None
    used: bool

@dataclass(frozen=True)
class ExpectedEffect:
    """For one steered value: the calibrated strength in use and the share of held-out
    (calibration) dilemmas expected to favour the value there, beside the unsteered share."""

    value: str
    strength: float
    favoured: float
    unsteered: float
    max_favoured: float  # the most the measured curve reaches
    instructed: bool = False  # measured with ICA's instruction before the question

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "strength": round(self.strength, 4),
                "favoured": round(self.favoured, 4), "unsteered": round(self.unsteered, 4),
                "max_favoured": round(self.max_favoured, 4), "instructed": self.instructed}

    def sentence(self) -> str:
        how = " with the instruction" if self.instructed else ""
        return (f"{self.value}: favoured on {self.favoured:.0%} of held-out dilemmas "
                f"(unsteered {self.unsteered:.0%}) at strength {self.strength:.2g}{how}")


@dataclass
class GenerationResult:
    text: str
    tokens: list[int]
    gate: GateReport
    layers: list[LayerReport]
    method: str
    mode: str
    targets: list[Target]
    prompt_tokens: int = 0
    generation_tps: float = 0.0
    seconds: float = 0.0
    expected: list[ExpectedEffect] = field(default_factory=list)  # calibrated method only
    instruction: str = ""  # the instruction put before the question (cfg.instruct, gate open)

    @property
    def steered(self) -> bool:
        return bool(self.layers)

    def as_dict(self) -> dict[str, Any]:
        first = self.targets[0].value if self.targets else None
        return {
            "text": self.text,
            "method": self.method,
            "mode": self.mode,
            "targets": [{"value": t.value, "p0": t.p0, "away": t.away} for t in self.targets],
            "gate": {"score": None if self.gate.score is None else round(self.gate.score, 6),
                     "open": self.gate.open, "threshold": self.gate.threshold,
                     "used": self.gate.used},
            "layers": [r.as_dict(first) for r in self.layers],
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": len(self.tokens),
            "generation_tps": round(self.generation_tps, 2),
            "seconds": round(self.seconds, 3),
            "expected": [e.as_dict() for e in self.expected],
            "instruction": self.instruction or None,
        }

    def summary(self) -> str:
        """One compact diagnostics line (used by the CLI and the chat)."""
        g = self.gate
        gate = ("gate off" if not g.used else
                f"gate {g.score:.2f} {'open' if g.open else 'closed'}" if g.score is not None
                else "gate n/a")
        if not self.layers:
            return f"{gate} · {self.method}: no change"
        if self.instruction and not any(e.instructed for e in self.expected):
            gate += " · with the instruction"  # else the expected effect's sentence says it
        if self.expected:
            return (f"{gate} · {self.method} · {len(self.layers)} layers · "
                    + "; ".join(e.sentence() for e in self.expected))
        norms = [r.delta_norm for r in self.layers]
        parts = []
        for t in self.targets:
            if not any(t.value in r.p_before for r in self.layers):
                parts.append(f"{t.value}{'↓' if t.away else '↑'} fixed vector")
                continue
            # Only the blocks that steer this value: others have no P for it.
            mine = [r for r in self.layers if t.value in r.p_before]
            before = np.mean([r.p_before[t.value] for r in mine])
            after = np.mean([r.p_after[t.value] for r in mine])
            arrow = "↓" if t.away else "↑"
            parts.append(f"{t.value}{arrow} P {before:.2f}→{after:.2f}")
        return (f"{gate} · {self.method}/{self.mode} · {len(self.layers)} layers · "
                f"|δ| mean {np.mean(norms):.2f} · " + ", ".join(parts))

