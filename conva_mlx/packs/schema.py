"""Type checks for pack.json: every field a loader reads, checked before it is used.

A hand-edited or foreign pack.json must end in one clear ConvaError that names the file,
the field and what was found, never in a TypeError deep inside steering.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from conva_mlx.errors import ConvaError
from conva_mlx.values import VALUE_NAMES

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Fields:
    """Typed reads of one JSON object; `where` names it in every message."""

    def __init__(self, obj: Any, where: str) -> None:
        if not isinstance(obj, dict):
            raise ConvaError(f"{where}: expected a JSON object, got {_show(obj)}")
        self.obj: dict[str, Any] = obj
        self.where = where

    def _bad(self, key: str, expected: str) -> ConvaError:
        return ConvaError(f"{self.where}: '{key}' must be {expected}, got "
                          f"{_show(self.obj.get(key))}")

    def has(self, key: str) -> bool:
        return self.obj.get(key) is not None

    def require(self, *keys: str) -> None:
        missing = [k for k in keys if k not in self.obj]
        if missing:
            raise ConvaError(f"{self.where}: missing key(s) {', '.join(missing)}")

    def integer(self, key: str, lo: int | None = None, hi: int | None = None) -> int:
        """An integer (not a bool, not a string) with lo <= x < hi."""
        x = self.obj.get(key)
        if isinstance(x, bool) or not isinstance(x, int):
            raise self._bad(key, "an integer")
        if (lo is not None and x < lo) or (hi is not None and x >= hi):
            raise self._bad(key, f"an integer in [{lo}, {hi})" if hi is not None
                            else f"an integer >= {lo}")
        return x

    def number(self, key: str, default: float | None = None) -> float:
        """A finite JSON number."""
        x = self.obj.get(key, default)
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise self._bad(key, "a finite number")
        return float(x)

    def string(self, key: str, default: str | None = None) -> str:
        x = self.obj.get(key, default)
        if not isinstance(x, str):
            raise self._bad(key, "a string")
        return x

    def boolean(self, key: str, default: bool = False) -> bool:
        x = self.obj.get(key, default)
        if not isinstance(x, bool):
            raise self._bad(key, "true or false")
        return x

    def object(self, key: str, default: dict[str, Any] | None = None) -> dict[str, Any]:
        x = self.obj.get(key, default)
        if x is None and default is not None:
            return default
        if not isinstance(x, dict):
            raise self._bad(key, "a JSON object")
        return x

    def sub(self, key: str) -> Fields:
        return Fields(self.object(key), f"{self.where} ({key})")

    def layers(self, key: str, num_layers: int) -> list[int]:
        """A list of distinct block indices in [0, num_layers)."""
        x = self.obj.get(key)
        ok = isinstance(x, list) and all(isinstance(k, int) and not isinstance(k, bool)
                                         for k in x)
        if not ok:
            raise self._bad(key, "a list of block indices")
        assert isinstance(x, list)
        return check_layers(x, num_layers, self.where, key)

    def numbers(self, key: str, length: int) -> list[float] | None:
        """An optional list of `length` finite numbers (None when absent)."""
        x = self.obj.get(key)
        if x is None:
            return None
        ok = (isinstance(x, list) and len(x) == length
              and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                      and math.isfinite(v) for v in x))
        if not ok:
            raise self._bad(key, f"a list of {length} numbers")
        return [float(v) for v in x]


def check_layers(layers: list[int], num_layers: int, where: str, key: str = "layers"
                 ) -> list[int]:
    """Steered blocks: at least one, each in [0, num_layers), none twice."""
    if not layers:
        raise ConvaError(f"{where}: '{key}' is empty, so the value would steer no block; "
                         f"list at least one block (0-{num_layers - 1})")
    bad = [k for k in layers if not 0 <= k < num_layers]
    if bad:
        raise ConvaError(f"{where}: '{key}' has block(s) {bad} outside 0-"
                         f"{num_layers - 1} (the model has {num_layers} blocks)")
    if len(set(layers)) != len(layers):
        raise ConvaError(f"{where}: '{key}' lists a block twice: {layers}")
    return [int(k) for k in layers]


def check_value_name(name: str, where: str) -> str:
    if name not in VALUE_NAMES:
        raise ConvaError(f"{where}: unknown value '{name}' (values: {', '.join(VALUE_NAMES)})")
    return name


def check_checksum(files: Fields, name: str) -> str:
    digest = files.string(name)
    if not _SHA256.match(digest):
        raise ConvaError(f"{files.where}: '{name}' must be a sha256 hex digest, got "
                         f"{_show(digest)}")
    return digest
