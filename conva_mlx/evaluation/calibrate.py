"""`conva-mlx calibrate`: size and aim the default method's push by measurement.

1. Responses (calibration half): every value's dilemmas scored unsteered and under each
   value's mean-difference push (CAA x1): the per-dilemma leakage responses R (10 pushes x
   dilemmas) and their 10 x 10 mean L (push x value whose dilemmas are scored).
2. The mix: steering is close to linear in the push (CAA x2 moves about twice CAA x1), so
   the push a x (the ten mean differences) moves value u's dilemmas by about (a L)_u. Per
   value v the ridge solution of a L = target x e_v (v's dilemmas up, the others still)
   with its ridge chosen by split halves of the calibration dilemmas, rescaled so the
   predicted own shift is the target: strength 1.
3. The curve: the calibrated push at a few strengths on each value's own dilemmas: shift,
   share favoured, and the change of the written actions' log-likelihood (fluency). It is
   cross-fitted: each half of the dilemmas is pushed with the mix fitted on the other half,
   so the curve promises what a push does on dilemmas it was not fitted on (a mix measured
   on its own fitting dilemmas looks about twice as strong as it is).
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
from conva_mlx.packs.calibration import Calibration, CurvePoint, ValueCalibration
from conva_mlx.steering import SteeringSession
from conva_mlx.values import VALUE_NAMES

BASIS = MethodSetting("caa")  # CAA x1: the pushes whose responses the mix combines
RIDGES = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # relative to the mean squared response
DEFAULT_STRENGTHS = (0.5, 1.0, 1.5)
DEFAULT_TARGET = 3.0  # nats of own-dilemma shift at strength 1


@dataclass
class CalibrateOptions:
    n: int | None = None  # dilemmas per value (None = the whole calibration half)
    target_shift: float = DEFAULT_TARGET
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    ridge: float | None = None  # None = chosen on split halves
    batch_size: int = 16
    show_progress: bool = True
    progress: Callable[[int, int], None] | None = None
    say: Callable[[str], None] = lambda _message: None  # stage notes (the CLI logs them)

    def __post_init__(self) -> None:
        if not self.target_shift > 0:
            raise ConvaError(f"the target shift must be > 0 nats, got {self.target_shift}")
        if not self.strengths or any(not 0 < s <= 8 for s in self.strengths):
            raise ConvaError("strengths must be in (0, 8]")
        if self.ridge is not None and not self.ridge >= 0:
            raise ConvaError(f"the ridge must be >= 0, got {self.ridge}")
        if self.n is not None and self.n < 4:
            raise ConvaError("calibration needs at least 4 dilemmas per value (--n)")


# ---------------------------------------------------------------- the fit (pure numpy)

def leakage_means(responses: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """(pushes, dilemmas) shifts -> (pushes, k) means over each value's dilemmas."""
    return np.stack([responses[:, cols == u].mean(axis=1) for u in range(k)], axis=1)


def fit_mix(leak: np.ndarray, target: float, ridge: float) -> np.ndarray:
    """Mixing weights W (row v: the push for value v as weights on the basis pushes) with
    W L ~ target x I; `ridge` is relative to the mean squared response. Each row is
    rescaled so its predicted own shift is `target` (a row whose own shift would be <= 0
    falls back to its own basis push, sized the same way when it can be)."""
    k = leak.shape[0]
    scale = float(np.mean(leak ** 2)) or 1.0
    gram = leak @ leak.T + ridge * scale * np.eye(k)
    w = target * np.linalg.solve(gram, leak).T  # rows: (target e_v) L^T (L L^T + r I)^-1
    for v in range(k):
        own = float(w[v] @ leak[:, v])
        if own > 1e-9:
            w[v] *= target / own
        else:
            w[v] = 0.0
            w[v, v] = target / leak[v, v] if leak[v, v] > 1e-9 else 1.0
    return w


def selectivity(pred: np.ndarray) -> tuple[float, float, int]:
    """(mean own shift, mean |off-target shift|, rows whose own value moved most)."""
    k = pred.shape[0]
    own = np.diag(pred)
    off = np.array([np.abs(np.delete(pred[v], v)).mean() for v in range(k)])
    largest = sum(int(np.argmax(np.abs(pred[v])) == v) for v in range(k))
    return float(own.mean()), float(off.mean()), largest


def choose_ridge(responses: np.ndarray, cols: np.ndarray, target: float,
                 ridges: tuple[float, ...] = RIDGES, repeats: int = 20, seed: int = 0
                 ) -> tuple[float, list[dict[str, float]]]:
    """The ridge whose mix, fitted on half of each value's dilemmas, is most selective on
    the other half (predicted linearly); ties to the larger ridge (the gentler push)."""
    k = responses.shape[0]
    rng = np.random.default_rng(seed)
    splits = []
    for _ in range(repeats):
        mask = np.zeros(cols.size, dtype=bool)
        for u in range(k):
            idx = np.flatnonzero(cols == u)
            rng.shuffle(idx)
            mask[idx[: idx.size // 2]] = True
        splits.append(mask)
    table = []
    for r in ridges:
        own_s, off_s, largest_s, norm_s = [], [], [], []
        for mask in splits:
            w = fit_mix(leakage_means(responses[:, mask], cols[mask], k), target, r)
            own, off, largest = selectivity(w @ leakage_means(responses[:, ~mask],
                                                              cols[~mask], k))
            own_s.append(own)
            off_s.append(off)
            largest_s.append(largest)
            norm_s.append(float(np.abs(w).sum(axis=1).mean()))
        own_m, off_m = float(np.mean(own_s)), float(np.mean(off_s))
        table.append({"ridge": r, "own": round(own_m, 4), "off_target": round(off_m, 4),
                      "selectivity": round(own_m / off_m, 4) if off_m > 0 else 0.0,
                      "largest": round(float(np.mean(largest_s)), 2),
                      "mix_l1": round(float(np.mean(norm_s)), 3)})
    best = max(table, key=lambda row: (round(row["selectivity"], 2), row["ridge"]))
    return float(best["ridge"]), table


# ---------------------------------------------------------------- the measurement

def item_shifts(store: JsonlStore, setting: MethodSetting, steered: str,
                items: list[ChoiceItem], form: str = "likelihood") -> np.ndarray:
    """Per dilemma: score under (setting, steered) minus the unsteered score."""
    none = MethodSetting("none")
    return np.array([float(store.records[score_key(form, setting, steered, it.id)]["score"])
                     - float(store.records[score_key(form, none, UNSTEERED, it.id)]["score"])
                     for it in items])


def _fluency_each(store: JsonlStore, setting: MethodSetting, steered: str,
                  items: list[ChoiceItem]) -> list[float]:
    """Per dilemma: change of the written actions' log-likelihood (both averaged), nats."""
    none = MethodSetting("none")
    out = []
    for it in items:
        s = store.records[score_key("likelihood", setting, steered, it.id)]
        b = store.records[score_key("likelihood", none, UNSTEERED, it.id)]
        out.append((s["ll_value"] + s["ll_competing"] - b["ll_value"] - b["ll_competing"]) / 2)
    return out


def fold_masks(cols: np.ndarray, k: int, folds: int = 2) -> list[np.ndarray]:
    """Each value's dilemmas dealt into `folds` folds in order (deterministic)."""
    out = [np.zeros(cols.size, dtype=bool) for _ in range(folds)]
    for u in range(k):
        for i, j in enumerate(np.flatnonzero(cols == u)):
            out[i % folds][j] = True
    return out


def _with_mix(cal: Calibration, values: list[str], mix: np.ndarray) -> Calibration:
    """A copy of `cal` pushing with another mix (the curve's cross-fitting)."""
    out = Calibration(cal.model_fingerprint, cal.dataset_hash, cal.recipe, cal.target_shift,
                      {}, cal.ridge, cal.split, cal.notes)
    for v_i, v in enumerate(values):
        out.values[v] = ValueCalibration(
            {u: float(mix[v_i, u_i]) for u_i, u in enumerate(values) if mix[v_i, u_i] != 0},
            cal.values[v].unsteered_favoured, [], cal.values[v].n)
    return out


def run_calibration(session: SteeringSession, out: Path, opts: CalibrateOptions
                    ) -> Calibration:
    """Steps 1-3 of the module docstring; resumable (scores live under `out`)."""
    pack = session.pack
    if pack is None:
        raise ConvaError("calibration needs a pack")
    values = [v for v in VALUE_NAMES if v in pack.values]
    if len(values) < 2:
        raise ConvaError("calibration needs a pack with at least two values (the mix "
                         "weighs every value's push against the others)")
    items = load_choice_items(values, "calibration", opts.n)
    cols = np.array([values.index(it.value) for it in items])
    pack.calibration = None  # the responses are to the plain mean differences
    opts.say(f"calibrate 1/2: {len(values)} pushes x {len(items)} calibration dilemmas")
    run_choices(ChoiceRun(session, out / "responses"),
                ChoiceOptions(values=values, settings=[BASIS], split="calibration", n=opts.n,
                              batch_size=opts.batch_size, leakage=True,
                              show_progress=opts.show_progress, progress=opts.progress))
    store = JsonlStore(out / "responses" / "choices.jsonl")
    responses = np.stack([item_shifts(store, BASIS, v, items) for v in values])
    leak = leakage_means(responses, cols, len(values))
    if opts.ridge is None:
        ridge, cv = choose_ridge(responses, cols, opts.target_shift)
    else:
        ridge, cv = opts.ridge, []
    mix = fit_mix(leak, opts.target_shift, ridge)
    base = {it.id: float(store.records[score_key("likelihood", MethodSetting("none"),
                                                 UNSTEERED, it.id)]["score"])
            for it in items}
    cal = Calibration(pack.model.fingerprint, pack.dataset_hash, pack.recipe.name,
                      opts.target_shift, {}, ridge,
                      notes={"basis": "caa x1 at each value's blocks",
                             "basis_leakage": [[round(float(x), 4) for x in row]
                                               for row in leak],
                             "ridge_cv": cv, "values_order": values,
                             "n_dilemmas": len(items)})
    for v_i, v in enumerate(values):
        own = [it for it in items if it.value == v]
        cal.values[v] = ValueCalibration(
            {u: float(mix[v_i, u_i]) for u_i, u in enumerate(values) if mix[v_i, u_i] != 0},
            float(np.mean([base[it.id] > 0 for it in own])), [], len(own))
    opts.say(f"calibrate 2/2: the calibrated push at strengths "
             f"{', '.join(f'{s:g}' for s in opts.strengths)} on each value's own dilemmas, "
             "cross-fitted (each half pushed with the mix fitted on the other half)")
    settings = [MethodSetting("calibrated", s) for s in opts.strengths]
    folds = fold_masks(cols, len(values))
    curve_scores: dict[str, dict[float, list[tuple[float, float, float]]]] = {
        v: {float(s.strength or 1.0): [] for s in settings} for v in values}
    for f, held in enumerate(folds):
        fold_mix = fit_mix(leakage_means(responses[:, ~held], cols[~held], len(values)),
                           opts.target_shift, ridge)
        pack.calibration = _with_mix(cal, values, fold_mix)
        held_items = [it for it, h in zip(items, held) if h]
        run_choices(ChoiceRun(session, out / f"curve-{f}"),
                    ChoiceOptions(values=values, settings=settings, split="calibration",
                                  n=opts.n, batch_size=opts.batch_size,
                                  ids=frozenset(it.id for it in held_items),
                                  show_progress=opts.show_progress, progress=opts.progress))
        fold_store = JsonlStore(out / f"curve-{f}" / "choices.jsonl")
        for v in values:
            own = [it for it in held_items if it.value == v]
            for s in settings:
                shifts = item_shifts(fold_store, s, v, own)
                flu = _fluency_each(fold_store, s, v, own)
                curve_scores[v][float(s.strength or 1.0)] += [
                    (float(d), float(d + base[it.id]), float(fl))
                    for d, it, fl in zip(shifts, own, flu)]
    pack.calibration = cal
    for v in values:
        points = []
        for strength, rows in sorted(curve_scores[v].items()):
            arr = np.array(rows)
            points.append(CurvePoint(strength, float(arr[:, 0].mean()),
                                     float((arr[:, 1] > 0).mean()), float(arr[:, 2].mean())))
        cal.values[v].curve = points
    return cal
