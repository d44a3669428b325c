"""Value structure: cosine similarities between value vectors vs the Schwartz circumplex."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from conva_mlx.errors import ConvaError
from conva_mlx.packs.pack import Pack
from conva_mlx.values import VALUE_NAMES, circumplex_distance


@dataclass
class StructureReport:
    layer: int
    values: list[str]
    cosine: np.ndarray  # (V, V)
    neighbour_mean: float  # mean cosine of circumplex neighbours (distance 1)
    opposite_mean: float  # mean cosine of opposites (distance 4-5)
    spearman: float  # rank correlation between cosine and -distance over all pairs

    @property
    def neighbours_more_similar(self) -> bool:
        return self.neighbour_mean > self.opposite_mean


def common_layer(pack: Pack) -> int:
    """The block where the values' probes are jointly best (highest mean accuracy)."""
    accs = np.stack([v.probes.accuracies for v in pack.values.values()])
    n = accs.shape[1]
    allowed = np.arange(n) < max(1, n - 5)
    mean = np.where(allowed, accs.mean(axis=0), -1)
    return int(mean.argmax())


def _rank(x: np.ndarray) -> np.ndarray:
    order = x.argsort()
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    return ranks


def value_structure(pack: Pack, layer: int | None = None) -> StructureReport:
    values = [v for v in VALUE_NAMES if v in pack.values]
    if len(values) < 3:
        raise ConvaError("analyze needs a pack with at least 3 values")
    k = common_layer(pack) if layer is None else layer
    if not 0 <= k < pack.model.num_layers:
        raise ConvaError(f"layer {k} is out of range (0..{pack.model.num_layers - 1})")
    vecs = np.stack([pack.values[v].probes.directions[k] for v in values]).astype(np.float64)
    cos = vecs @ vecs.T
    near, far, sims, dists = [], [], [], []
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            d = circumplex_distance(values[i], values[j])
            sims.append(cos[i, j])
            dists.append(d)
            if d == 1:
                near.append(cos[i, j])
            elif d >= 4:
                far.append(cos[i, j])
    s, dd = np.array(sims), -np.array(dists, dtype=float)
    rho = float(np.corrcoef(_rank(s), _rank(dd))[0, 1]) if len(s) > 2 else float("nan")
    return StructureReport(k, values, cos, float(np.mean(near)) if near else float("nan"),
                           float(np.mean(far)) if far else float("nan"), rho)
