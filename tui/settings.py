"""The chat's steering settings: per-value stance (off, toward, away) and strength, gate,
instruction, mode, compare."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from conva_mlx import DEFAULT_METHOD, VALUE_GROUPS, VALUE_NAMES, SteerConfig, Target

Stance = Literal["off", "toward", "away"]  # what the chat does with one value
STANCES: tuple[Stance, ...] = ("off", "toward", "away")
P0_MIN, P0_MAX, P0_STEP = 0.50, 0.99, 0.01
DEFAULT_P0 = 0.95


def clamp_p0(p0: float) -> float:
    return round(min(P0_MAX, max(P0_MIN, p0)), 2)


def panel_groups() -> list[tuple[str, list[str]]]:
    """VALUE_GROUPS, each value shown once (hedonism, in two groups, stays in the first)."""
    seen: set[str] = set()
    out = []
    for group, names in VALUE_GROUPS.items():
        fresh = [n for n in names if n not in seen]
        seen.update(fresh)
        out.append((group, fresh))
    missing = [v for v in VALUE_NAMES if v not in seen]
    if missing:
        out.append(("other", missing))
    return out


def shared_groups(value: str) -> list[str]:
    """Groups a value belongs to (hedonism: two)."""
    return [g for g, names in VALUE_GROUPS.items() if value in names]


@dataclass
class ValueSetting:
    stance: Stance = "off"
    # The level the value should reach: for the calibrated method (the chat's) the share of
    # held-out dilemmas that should favour it; the pack's calibrated level by default.
    p0: float = DEFAULT_P0

    def cycle(self) -> None:
        self.stance = STANCES[(STANCES.index(self.stance) + 1) % len(STANCES)]


@dataclass
class ChatSettings:
    values: dict[str, ValueSetting] = field(
        default_factory=lambda: {v: ValueSetting() for v in VALUE_NAMES})
    gate: bool = True
    # ICA's instruction before the message too, where the gate opens (generate --instruct);
    # the app sets the pack's default when it opens a pack
    instruct: bool = False
    mode: Literal["prompt", "token"] = "prompt"
    compare: bool = False

    def active(self) -> list[tuple[str, ValueSetting]]:
        return [(v, s) for v, s in self.values.items() if s.stance != "off"]

    def targets(self) -> list[Target]:
        return [Target(v, s.p0, s.stance == "away") for v, s in self.active()]

    def steer_config(self) -> SteerConfig:
        """The session config; with no value chosen the reply is plain (method none)."""
        targets = self.targets()
        if not targets:
            return SteerConfig(method="none", mode=self.mode, gate=self.gate)
        return SteerConfig(targets=targets, method=DEFAULT_METHOD, mode=self.mode,
                           gate=self.gate, instruct=self.instruct)

    def use_levels(self, levels: dict[str, float]) -> None:
        """Start each value at the level its calibration expects at its default strength."""
        for name, level in levels.items():
            if name in self.values:
                self.values[name].p0 = clamp_p0(level)

    def describe(self) -> str:
        """One line for the status bar and the transcript."""
        parts = [f"{v} {'↑' if s.stance == 'toward' else '↓'} {s.p0:.2f}"
                 for v, s in self.active()]
        steer = ", ".join(parts) if parts else "no steering"
        line = f"{steer} · mode {self.mode} · gate {'on' if self.gate else 'off'}"
        return line + " · with the instruction" if self.instruct else line

    # ----- presets -----------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"values": {v: {"stance": s.stance, "p0": s.p0}
                           for v, s in self.values.items()},
                "gate": self.gate, "instruct": self.instruct, "mode": self.mode}

    def apply_json(self, data: dict[str, Any]) -> None:
        """Load a preset: unknown values are ignored, strengths are clamped to the range."""
        values = data.get("values", {})
        if not isinstance(values, dict):
            raise ValueError("'values' must be an object")
        for name, setting in self.values.items():
            raw = values.get(name, {})
            stance = raw.get("stance", raw.get("direction", "off"))  # "direction": older presets
            setting.stance = stance if stance in STANCES else "off"
            setting.p0 = clamp_p0(float(raw.get("p0", DEFAULT_P0)))
        self.gate = bool(data.get("gate", self.gate))
        self.instruct = bool(data.get("instruct", self.instruct))  # older presets: as is
        mode = data.get("mode", self.mode)
        self.mode = mode if mode in ("prompt", "token") else "prompt"
