"""Paired shifts with bootstrap intervals: the statistics of the choice instrument."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

N_BOOT = 2000


@dataclass(frozen=True)
class Shift:
    """A paired shift (steered minus unsteered, per dilemma) summarised."""

    mean: float
    lo: float  # 95% bootstrap interval of the mean
    hi: float
    moved: float  # share of dilemmas that moved toward the value (diff > 0)
    n: int

    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def as_dict(self) -> dict[str, object]:
        return {"shift": round(self.mean, 4), "ci": [round(self.lo, 4), round(self.hi, 4)],
                "moved": round(self.moved, 4), "n": self.n}


def bootstrap_mean_ci(groups: Sequence[Sequence[float] | np.ndarray], n_boot: int = N_BOOT,
                      seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the pooled mean, resampling within each group (stratified:
    each value keeps its number of dilemmas in every resample)."""
    arrays = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not arrays:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    total = sum(a.size for a in arrays)
    sums = np.zeros(n_boot)
    for a in arrays:
        picks = rng.integers(0, a.size, size=(n_boot, a.size))
        sums += a[picks].sum(axis=1)
    means = sums / total
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def paired_shift(steered: Sequence[Sequence[float]], base: Sequence[Sequence[float]],
                 seed: int = 0) -> Shift:
    """Steered minus unsteered per dilemma (groups = values, paired element by element)."""
    diffs = [np.asarray(s, dtype=np.float64) - np.asarray(b, dtype=np.float64)
             for s, b in zip(steered, base)]
    flat = np.concatenate(diffs) if diffs else np.zeros(0)
    if flat.size == 0:
        return Shift(float("nan"), float("nan"), float("nan"), float("nan"), 0)
    lo, hi = bootstrap_mean_ci(diffs, seed=seed)
    return Shift(float(flat.mean()), lo, hi, float((flat > 0).mean()), int(flat.size))


def mean_ci(groups: Sequence[Sequence[float]], seed: int = 0) -> tuple[float, float, float]:
    """Pooled mean with its stratified 95% bootstrap interval."""
    flat = np.concatenate([np.asarray(g, dtype=np.float64) for g in groups]) if groups \
        else np.zeros(0)
    if flat.size == 0:
        return float("nan"), float("nan"), float("nan")
    lo, hi = bootstrap_mean_ci(groups, seed=seed)
    return float(flat.mean()), lo, hi
