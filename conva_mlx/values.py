"""Schwartz's 10 basic values, their definitions, groups and circumplex positions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from conva_mlx.errors import ConvaError

# Circumplex order: neighbours are compatible, opposites conflict (wraps around).
VALUE_NAMES: tuple[str, ...] = (
    "self-direction", "stimulation", "hedonism", "achievement", "power",
    "security", "conformity", "tradition", "benevolence", "universalism",
)
VALUE_GROUPS: dict[str, tuple[str, ...]] = {
    "openness to change": ("self-direction", "stimulation", "hedonism"),
    "self-enhancement": ("hedonism", "achievement", "power"),
    "conservation": ("security", "conformity", "tradition"),
    "self-transcendence": ("benevolence", "universalism"),
}
_VALUES_FILE = Path(__file__).parent / "data" / "values.jsonl"


@dataclass(frozen=True)
class Value:
    name: str
    definition: str
    group: str
    position: int

    @property
    def title(self) -> str:
        return self.name.replace("-", " ").title().replace(" ", "-")


@cache
def load_values() -> dict[str, Value]:
    out = {}
    with open(_VALUES_FILE, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                out[r["name"]] = Value(r["name"], r["definition"], r["group"], int(r["position"]))
    return out


def check_value(name: str) -> str:
    if name not in VALUE_NAMES:
        raise ConvaError(f"unknown value '{name}' (values: {', '.join(VALUE_NAMES)})")
    return name


def parse_values(spec: str) -> list[str]:
    """'all' or a comma-separated list of value names."""
    if spec.strip() == "all":
        return list(VALUE_NAMES)
    return [check_value(v.strip()) for v in spec.split(",") if v.strip()]


def circumplex_distance(a: str, b: str) -> int:
    """Steps between two values around the circle (0..5)."""
    i, j = VALUE_NAMES.index(a), VALUE_NAMES.index(b)
    d = abs(i - j)
    return min(d, len(VALUE_NAMES) - d)
