"""`conva-mlx calibrate`: size the default method's push per value, by measurement.

1. The dose-response (calibration half): each value's push along its direction (the pack's
   contrast vectors: the value's positive sentences against the other values'; else its
   mean difference) at a few coefficients, scored on the value's own dilemmas: the shift
   of log p(value action) - log p(competing action), the share favouring the value, and
   the change of the written actions' log-likelihood (fluency).
2. The size: per value the smallest coefficient whose (interpolated) shift reaches the
   target, among those whose fluency change stays above the floor; where the target is out
   of reach, the largest fluent coefficient. Strength 1 = that coefficient.
3. The curve: the measured points in strength units, so a level such as "favoured on 80%
   of held-out dilemmas" maps to a strength and back.
4. With `instruct`: the same pushes with ICA's instruction before the question, and the
   instruction alone (ICA, ungated: the calibration dilemmas are value-laden), so a
   strength means something with `--instruct` too. The sizes stay the push alone's, and
   the pack's default becomes instruction + push.
5. With `keep_sizes`: the pack's calibration keeps its sizes (the pushes readers confirmed)
   and only the curve is measured again, at strengths in the calibrated push's units (for
   example on all 30 calibration dilemmas where the sizes came from 10).

(A first form aimed each push with the ridge inverse of the 10 x 10 leakage responses; on
the default model its held-out selectivity was 1.32 at best, four values did not move and
the mixes broke fluency, so it was dropped: docs/evaluation.md.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conva_mlx.errors import ConvaError
from conva_mlx.evaluation.choices import (
    UNSTEERED,
    ChoiceItem,
    ChoiceOptions,
    ChoiceRun,
    MethodSetting,
    load_choice_items,
    run_choices,
    score_key,
)
from conva_mlx.evaluation.store import JsonlStore
from conva_mlx.packs.calibration import (
    MAX_STRENGTH,
    Calibration,
    CurvePoint,
    ValueCalibration,
)
from conva_mlx.steering import SteeringSession
from conva_mlx.values import VALUE_NAMES

DEFAULT_COEFS = (0.25, 0.5, 1.0, 1.5)
DEFAULT_TARGET = 1.5  # nats of own-dilemma shift at strength 1
DEFAULT_FLUENCY_FLOOR = -4.0  # nats: the most the written actions may lose (CAA x1: -2.2)
BAND = (0.3, 0.7)  # the depth band: where CAA-style pushes work in the literature
BLOCK_CHOICES = ("band", "recipe")


def band_blocks(num_layers: int, band: tuple[float, float] = BAND) -> list[int]:
    """The blocks between 30% and 70% of the depth (at least one)."""
    lo, hi = round(band[0] * num_layers), round(band[1] * num_layers)
    return list(range(lo, max(hi, lo + 1)))


@dataclass
class CalibrateOptions:
    n: int | None = None  # dilemmas per value (None = the whole calibration half)
    target_shift: float = DEFAULT_TARGET
    coefs: tuple[float, ...] = DEFAULT_COEFS
    fluency_floor: float = DEFAULT_FLUENCY_FLOOR
    blocks: str = "band"  # band: every value at the depth band; recipe: the pack's blocks
    instruct: bool = False  # also measure the curve with ICA's instruction (step 4)
    # what requests without a strength get (1 = the calibrated push): the size blind
    # readers chose on the calibration half, recorded with the measurement (None: 1, or
    # the kept calibration's with keep_sizes)
    default_strength: float | None = None
    keep_sizes: bool = False  # step 5: `coefs` are then strengths of the calibrated push
    batch_size: int = 16
    show_progress: bool = True
    progress: Callable[[int, int], None] | None = None
    say: Callable[[str], None] = lambda _message: None  # stage notes (the CLI logs them)

    def __post_init__(self) -> None:
        if not self.target_shift > 0:
            raise ConvaError(f"the target shift must be > 0 nats, got {self.target_shift}")
        if not self.coefs or any(not 0 < c <= MAX_STRENGTH for c in self.coefs):
            raise ConvaError(f"coefficients must be in (0, {MAX_STRENGTH:g}]")
        if not self.fluency_floor < 0:
            raise ConvaError(f"the fluency floor must be < 0 nats, got {self.fluency_floor}")
        if self.blocks not in BLOCK_CHOICES:
            raise ConvaError(f"blocks must be one of {', '.join(BLOCK_CHOICES)}")
        if self.default_strength is not None and not (
                0 < self.default_strength <= MAX_STRENGTH):  # also refuses NaN
            raise ConvaError(f"the default strength must be in (0, {MAX_STRENGTH:g}], got "
                             f"{self.default_strength}")
        if self.n is not None and self.n < 4:
            raise ConvaError("calibration needs at least 4 dilemmas per value (--n)")


@dataclass(frozen=True)
class DosePoint:
    coef: float
    shift: float
    favoured: float
    fluency: float


def choose_coef(points: list[DosePoint], target: float, floor: float) -> tuple[float, bool]:
    """The smallest coefficient whose interpolated shift reaches `target` among the fluent
    ones (fluency >= floor, interpolated too); else the largest fluent coefficient.
    Returns (coefficient, whether the target was reached)."""
    pts = sorted(points, key=lambda p: p.coef)
    xs = np.array([0.0] + [p.coef for p in pts])
    shifts = np.array([0.0] + [p.shift for p in pts])
    flu = np.array([0.0] + [p.fluency for p in pts])
    grid = np.linspace(0.0, xs[-1], 400)[1:]
    s_grid, f_grid = np.interp(grid, xs, shifts), np.interp(grid, xs, flu)
    fluent = f_grid >= floor
    if not fluent.any():
        return float(grid[0]), False
    # stop at the first coefficient that breaks the floor: beyond it nothing is fluent
    last_fluent = int(np.argmin(fluent)) if not fluent.all() else grid.size
    reach = np.flatnonzero(s_grid[:last_fluent] >= target)
    if reach.size:
        return float(grid[reach[0]]), True
    return float(grid[max(0, last_fluent - 1)]), False


def _points(store: JsonlStore, settings: list[MethodSetting], value: str,
            items: list[ChoiceItem]) -> list[DosePoint]:
    none = MethodSetting("none")
    out = []
    for s in settings:
        shifts, fav, flu = [], [], []
        for it in items:
            r = store.records[score_key("likelihood", s, value, it.id)]
            b = store.records[score_key("likelihood", none, UNSTEERED, it.id)]
            shifts.append(r["score"] - b["score"])
            fav.append(r["score"] > 0)
            flu.append((r["ll_value"] + r["ll_competing"] - b["ll_value"]
                        - b["ll_competing"]) / 2)
        out.append(DosePoint(s.push_strength, float(np.mean(shifts)),
                             float(np.mean(fav)), float(np.mean(flu))))
    return out


def _in_strength_units(points: list[DosePoint], coef: float) -> list[CurvePoint]:
    """The measured points with strength = coefficient / the value's chosen coefficient."""
    return [CurvePoint(round(p.coef / coef, 4), p.shift, p.favoured, p.fluency)
            for p in points if 0 < p.coef / coef <= MAX_STRENGTH]


def unit_calibration(pack_values: list[str], fingerprint: str, dataset_hash: str,
                     recipe: str, direction: str, blocks: list[int] | None) -> Calibration:
    """Every value pushed along its own direction at coefficient 1 (the dose-response's
    reference: strength = coefficient)."""
    return Calibration(fingerprint, dataset_hash, recipe, 1.0,
                       {v: ValueCalibration({v: 1.0}, 0.5) for v in pack_values},
                       direction=direction, blocks=blocks)


def run_calibration(session: SteeringSession, out: Path, opts: CalibrateOptions
                    ) -> Calibration:
    """Steps 1-4 (5 with keep_sizes) of the module docstring; resumable (scores live
    under `out`)."""
    pack = session.pack
    if pack is None:
        raise ConvaError("calibration needs a pack")
    if opts.keep_sizes:
        return remeasure_curves(session, out, opts)
    values = [v for v in VALUE_NAMES if v in pack.values]
    direction = ("contrast" if all(pack.values[v].contrast is not None for v in values)
                 else "mean-diff")
    items = load_choice_items(values, "calibration", opts.n)
    blocks = band_blocks(pack.model.num_layers) if opts.blocks == "band" else None
    pack.calibration = unit_calibration(values, pack.model.fingerprint, pack.dataset_hash,
                                        pack.recipe.name, direction, blocks)
    where = (f"blocks {blocks[0]}-{blocks[-1]}" if blocks else "each value's recipe blocks")
    opts.say(f"calibrate: {len(values)} values x {len(opts.coefs)} coefficients along the "
             f"{direction} direction at {where}, {len(items)} calibration dilemmas")
    doses = _score_doses(session, out, opts, values)
    cal = Calibration(pack.model.fingerprint, pack.dataset_hash, pack.recipe.name,
                      opts.target_shift, {}, direction=direction, blocks=blocks,
                      notes={"coefficients": list(opts.coefs),
                             "fluency_floor": opts.fluency_floor, "reached": {},
                             "n_dilemmas": len(items)})
    for v in values:
        own = [it for it in items if it.value == v]
        coef, reached = choose_coef(_points(doses.store, doses.pushes, v, own),
                                    opts.target_shift, opts.fluency_floor)
        cal.values[v] = doses.value_calibration(v, own, {v: round(coef, 4)}, coef)
        cal.notes["reached"][v] = reached
    cal.instruct = opts.instruct  # measured with the instruction: instruction + push by default
    cal.strength = 1.0 if opts.default_strength is None else opts.default_strength
    pack.calibration = cal
    return cal


def remeasure_curves(session: SteeringSession, out: Path, opts: CalibrateOptions
                     ) -> Calibration:
    """Step 5: the pack's calibration with its sizes kept and its curves measured again at
    strengths `opts.coefs`. The scores' directory is tied to those sizes (the pack's digest
    covers them), so it never mixes in scores of other pushes."""
    pack = session.pack
    kept = pack.calibration if pack is not None else None
    if pack is None or kept is None:
        raise ConvaError("--keep-sizes needs a pack with a calibration; run `conva-mlx "
                         "calibrate` without it first")
    if kept.instruct and not opts.instruct:
        raise ConvaError("this calibration's default puts ICA's instruction before the "
                         "question; pass --instruct to measure that curve again too")
    values = [v for v in VALUE_NAMES if v in pack.values and v in kept.values]
    items = load_choice_items(values, "calibration", opts.n)
    opts.say(f"calibrate: the kept sizes of {len(values)} values at strengths "
             f"{', '.join(f'{c:g}' for c in opts.coefs)}, {len(items)} calibration dilemmas")
    doses = _score_doses(session, out, opts, values)
    cal = Calibration(kept.model_fingerprint, kept.dataset_hash, kept.recipe,
                      kept.target_shift, {}, direction=kept.direction, blocks=kept.blocks,
                      notes={**kept.notes, "strengths": list(opts.coefs),
                             "sizes_from_n_dilemmas": kept.notes.get(
                                 "sizes_from_n_dilemmas", kept.notes.get("n_dilemmas")),
                             "n_dilemmas": len(items)})
    for v in values:
        own = [it for it in items if it.value == v]
        cal.values[v] = doses.value_calibration(v, own, dict(kept.values[v].mix), 1.0)
    cal.instruct = opts.instruct
    cal.strength = kept.strength if opts.default_strength is None else opts.default_strength
    pack.calibration = cal
    return cal


@dataclass(frozen=True)
class _Doses:
    """The dose-response's scores: each push of the run (`coefs`), the same with ICA's
    instruction where it was asked for, and the instruction alone."""

    store: JsonlStore
    pushes: list[MethodSetting]
    instructed: list[MethodSetting]

    def value_calibration(self, value: str, own: list[ChoiceItem], mix: dict[str, float],
                          unit: float) -> ValueCalibration:
        """`value`'s calibration for the push `mix`; curve strengths = coefficient / unit."""
        cal = ValueCalibration(mix, _favoured(self.store, MethodSetting("none"), UNSTEERED, own),
                               _in_strength_units(_points(self.store, self.pushes, value, own),
                                                  unit), len(own))
        if self.instructed:
            cal.instructed_favoured = _favoured(self.store, MethodSetting("ica"), value, own)
            cal.instructed_curve = _in_strength_units(
                _points(self.store, self.instructed, value, own), unit)
        return cal


def _score_doses(session: SteeringSession, out: Path, opts: CalibrateOptions,
                 values: list[str]) -> _Doses:
    """Score (resuming) every setting the calibration reads, at the pack's current pushes."""
    pushes = [MethodSetting("calibrated", c) for c in opts.coefs]
    instructed = [MethodSetting("ica+calibrated", c) for c in opts.coefs] if opts.instruct else []
    alone = [MethodSetting("ica")] if opts.instruct else []
    run_choices(ChoiceRun(session, out),
                ChoiceOptions(values=values, settings=pushes + instructed + alone,
                              split="calibration", n=opts.n,
                              batch_size=opts.batch_size, show_progress=opts.show_progress,
                              progress=opts.progress))
    return _Doses(JsonlStore(out / "choices.jsonl"), pushes, instructed)


def _favoured(store: JsonlStore, setting: MethodSetting, steered: str,
              items: list[ChoiceItem]) -> float:
    """The share of `items` whose scored choice favours their value."""
    return float(np.mean([store.records[score_key("likelihood", setting, steered,
                                                  it.id)]["score"] > 0 for it in items]))
