"""A pack's calibration: how large the default method's push is, and what a strength means.

`conva-mlx calibrate` measures, on the calibration half of the dilemmas, each value's
dose-response along its direction (`direction`: the pack's contrast vectors, or the mean
differences) and sizes it per value (`mix`: the value's own direction times the chosen
coefficient; the format allows weights on other values' directions too). Strength 1 is
that push; `curve` holds what was measured at each strength, so a level such as "favoured
on 80% of held-out dilemmas" maps to a strength and back. `calibrate --instruct` also
measures the same pushes with ICA's instruction before the question (`instructed`: the
instruction alone, then the curve), which is what a strength means with `--instruct`, and
marks instruction + push as the pack's default (`instruct`): blind readers put it ahead of
the push alone, ICA and CAA on the default model (docs/evaluation.md). `strength` is the
strength a request that gives none gets (1 = the calibrated push; `calibrate
--default-strength`): the size blind readers chose, 0.5 with the instruction on Qwen2.5-0.5B.

It lives beside pack.json as calibration.json (written atomically, checked on load). Packs
of the models conva-mlx ships calibrations for (same model, dataset and recipe) find theirs
in conva_mlx/data/calibration/ when the pack directory has none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from conva_mlx.errors import ConvaError
from conva_mlx.fsutil import atomic_write_json
from conva_mlx.packs.schema import Fields, check_value_name

CALIBRATION_JSON = "calibration.json"
CALIBRATION_FORMAT = "conva-mlx-calibration"
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "data" / "calibration"
MAX_STRENGTH = 8.0  # far past where any measured push stays fluent
CAL_DIRECTIONS = ("contrast", "mean-diff")


@dataclass(frozen=True)
class CurvePoint:
    """The default method at one strength, measured on the value's calibration dilemmas."""

    strength: float
    shift: float  # mean paired LR shift of the value's own dilemmas (nats)
    favoured: float  # share of its dilemmas with LR > 0 (the value's action more likely)
    fluency: float  # mean change of log p(both written actions) (nats; < 0 = less likely)

    def as_dict(self) -> dict[str, float]:
        return {"strength": self.strength, "shift": round(self.shift, 4),
                "favoured": round(self.favoured, 4), "fluency": round(self.fluency, 4)}


@dataclass
class ValueCalibration:
    """One value: its push as a mix of the values' mean differences, and its curve."""

    mix: dict[str, float]  # value -> weight of that value's mean difference (at strength 1)
    unsteered_favoured: float
    curve: list[CurvePoint] = field(default_factory=list)  # sorted by strength, 0 excluded
    n: int = 0  # calibration dilemmas behind the curve
    # With ICA's instruction before the question: the share the instruction alone gives,
    # and the pushes' curve with it (None / empty: not measured)
    instructed_favoured: float | None = None
    instructed_curve: list[CurvePoint] = field(default_factory=list)

    @property
    def has_instructed(self) -> bool:
        return self.instructed_favoured is not None and bool(self.instructed_curve)

    def effect_at(self, strength: float, instructed: bool = False) -> float:
        """Expected share of held-out dilemmas favouring the value at `strength`
        (interpolated along the measured curve; 0 = unsteered, or the instruction alone)."""
        xs, ys = self._points(instructed)
        return float(np.interp(strength, xs, ys))

    def strength_for(self, effect: float, instructed: bool = False) -> float:
        """The smallest strength at which the measured curve (interpolated) reaches
        `effect`; 0 when the model already favours the value that often, the strength of
        the curve's highest point when it never does. `effect_at` of the result is
        `effect` (or that highest share)."""
        xs, ys = self._points(instructed)
        if effect <= ys[0]:
            return 0.0
        for x0, x1, y0, y1 in zip(xs[:-1], xs[1:], ys[:-1], ys[1:]):
            if y0 < effect <= y1:
                return float(x0 + (x1 - x0) * (effect - y0) / (y1 - y0))
        return float(xs[int(np.argmax(ys))])

    def max_effect(self, instructed: bool = False) -> float:
        return float(max(self._points(instructed)[1]))

    def _points(self, instructed: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if instructed:
            if self.instructed_favoured is None:
                raise ConvaError("this calibration has no curve with the instruction "
                                 "(conva-mlx calibrate --instruct)")
            base, curve = self.instructed_favoured, self.instructed_curve
        else:
            base, curve = self.unsteered_favoured, self.curve
        pts = [(0.0, base)] + [(p.strength, p.favoured) for p in curve]
        pts.sort()
        return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


@dataclass
class Calibration:
    """Every value's calibrated push for one pack (see the module docstring)."""

    model_fingerprint: str
    dataset_hash: str
    recipe: str
    target_shift: float
    values: dict[str, ValueCalibration]
    split: str = "calibration"
    direction: str = "mean-diff"  # the vectors `mix` weighs: contrast or mean-diff
    blocks: list[int] | None = None  # the blocks every push is added at (None: each value's)
    notes: dict[str, Any] = field(default_factory=dict)  # measured summaries (informational)
    # The default method also puts ICA's instruction before the question (where the gate
    # opens) unless a request says otherwise; set by `calibrate --instruct`.
    instruct: bool = False
    strength: float = 1.0  # what a request without a strength gets (1 = the calibrated push)

    def value(self, name: str) -> ValueCalibration | None:
        return self.values.get(name)

    def to_json(self) -> dict[str, Any]:
        return {"format": CALIBRATION_FORMAT, "format_version": 1,
                "model_fingerprint": self.model_fingerprint,
                "dataset_hash": self.dataset_hash, "recipe": self.recipe,
                "target_shift": self.target_shift, "direction": self.direction,
                "blocks": self.blocks, "instruct": self.instruct,
                "strength": self.strength, "split": self.split,
                "values": {v: _value_json(c) for v, c in self.values.items()},
                "notes": self.notes}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Calibration:
        f = Fields(obj, where)
        if f.string("format", "") != CALIBRATION_FORMAT:
            raise ConvaError(f"{where}: not a conva-mlx calibration (format "
                             f"'{f.obj.get('format')}')")
        if f.has("format_version") and f.integer("format_version", 1) > 1:
            raise ConvaError(f"{where}: calibration format is newer than this conva-mlx; "
                             "upgrade conva-mlx")
        values: dict[str, ValueCalibration] = {}
        vals = f.sub("values")
        for name in vals.obj:
            check_value_name(name, where)
            v = vals.sub(name)
            mix_f = v.sub("mix")
            mix = {check_value_name(k, mix_f.where): mix_f.number(k) for k in mix_f.obj}
            cal = ValueCalibration(mix, _share(v, "unsteered_favoured"), _curve(v),
                                   v.integer("n", 0) if v.has("n") else 0)
            if v.has("instructed"):
                inst = v.sub("instructed")
                cal.instructed_favoured = _share(inst, "favoured")
                cal.instructed_curve = _curve(inst)
            values[name] = cal
        target = f.number("target_shift")
        if target <= 0:
            raise ConvaError(f"{where}: 'target_shift' must be positive")
        direction = f.string("direction", "mean-diff")
        if direction not in CAL_DIRECTIONS:
            raise ConvaError(f"{where}: 'direction' must be one of {', '.join(CAL_DIRECTIONS)}"
                             f", got '{direction}'")
        blocks = None
        if f.has("blocks"):
            raw = f.obj["blocks"]
            if not (isinstance(raw, list) and raw and all(
                    isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in raw)):
                raise ConvaError(f"{where}: 'blocks' must be a list of block indices")
            blocks = sorted(set(raw))
        instruct = f.obj.get("instruct", False)
        if not isinstance(instruct, bool):
            raise ConvaError(f"{where}: 'instruct' must be true or false")
        if instruct and not all(v.has_instructed for v in values.values()):
            raise ConvaError(f"{where}: 'instruct' needs every value's curve with the "
                             "instruction ('instructed')")
        strength = f.number("strength") if f.has("strength") else 1.0
        if not 0 < strength <= MAX_STRENGTH:  # also refuses NaN
            raise ConvaError(f"{where}: 'strength' (the default strength) must be in "
                             f"(0, {MAX_STRENGTH:g}], got {strength}")
        return cls(f.string("model_fingerprint"), f.string("dataset_hash", ""),
                   f.string("recipe", ""), target, values, f.string("split", "calibration"),
                   direction, blocks, f.object("notes", {}), instruct, strength)


def _value_json(c: ValueCalibration) -> dict[str, Any]:
    out: dict[str, Any] = {"mix": {k: round(w, 6) for k, w in c.mix.items()},
                           "unsteered_favoured": round(c.unsteered_favoured, 4),
                           "n": c.n, "curve": [p.as_dict() for p in c.curve]}
    if c.instructed_favoured is not None:
        out["instructed"] = {"favoured": round(c.instructed_favoured, 4),
                             "curve": [p.as_dict() for p in c.instructed_curve]}
    return out


def _curve(f: Fields) -> list[CurvePoint]:
    """The measured points under `f`'s 'curve', sorted by strength."""
    raw = f.obj.get("curve", [])
    if not isinstance(raw, list):
        raise ConvaError(f"{f.where}: 'curve' must be a list")
    curve = []
    for i, p in enumerate(raw):
        pf = Fields(p, f"{f.where} (curve {i})")
        s = pf.number("strength")
        if not 0 < s <= MAX_STRENGTH:
            raise ConvaError(f"{pf.where}: 'strength' must be in (0, {MAX_STRENGTH}]")
        curve.append(CurvePoint(s, pf.number("shift"), _share(pf, "favoured"),
                                pf.number("fluency")))
    return sorted(curve, key=lambda p: p.strength)


def _share(f: Fields, key: str) -> float:
    x = f.number(key)
    if not 0 <= x <= 1:
        raise ConvaError(f"{f.where}: '{key}' must be a share in [0, 1], got {x}")
    return x


def read_calibration(path: Path) -> Calibration:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConvaError(f"{path}: unreadable calibration ({exc})") from exc
    return Calibration.from_json(obj, str(path))


def write_calibration(cal: Calibration, pack_dir: Path, force: bool = False) -> Path:
    path = Path(pack_dir) / CALIBRATION_JSON
    if path.exists() and not force:
        raise ConvaError(f"{path} exists; pass --force to replace it")
    atomic_write_json(path, cal.to_json())
    return path


def shipped_name(fingerprint: str, recipe: str) -> str:
    return f"{fingerprint}-{recipe}.json"


def find_calibration(pack_dir: Path | None, fingerprint: str, dataset_hash: str,
                     recipe: str) -> tuple[Calibration | None, str]:
    """The pack directory's calibration, else a shipped one made for the same model,
    dataset and recipe; with where it came from ('' when none)."""
    if pack_dir is not None and (Path(pack_dir) / CALIBRATION_JSON).is_file():
        path = Path(pack_dir) / CALIBRATION_JSON
        cal = read_calibration(path)
        if cal.model_fingerprint != fingerprint:
            raise ConvaError(f"{path}: calibrated for model {cal.model_fingerprint}, but the "
                             f"pack is for {fingerprint}; re-run `conva-mlx calibrate`")
        return cal, str(path)
    shipped = SHIPPED_DIR / shipped_name(fingerprint, recipe)
    if shipped.is_file():
        cal = read_calibration(shipped)
        if cal.dataset_hash == dataset_hash:
            return cal, f"shipped ({shipped.name})"
    return None, ""
