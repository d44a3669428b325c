"""The gate: a probe on the same model's hidden states that says whether a query is value-related.

Features: the state at one block, at the last token of the chat-templated user message
(exactly what the steering pass sees). Training data: value-related = every
context-controlled sentence (both members of each pair); value-unrelated = half of the
unrelated queries. The threshold is calibrated on held-out data (half of the test
dilemmas and a quarter of the unrelated queries); precision / recall / F1 are reported on
the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from conva_mlx.probes.linear import fit_probe
from conva_mlx.probes.perturbation import sigmoid_np

CALIBRATION_RECALL = 0.9  # open for at least this share of value-related calibration queries


@dataclass
class GateMetrics:
    precision: float
    recall: float
    f1: float
    false_open_rate: float
    n_related: int
    n_unrelated: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class Gate:
    layer: int
    weight: np.ndarray  # (hidden,)
    bias: float
    threshold: float  # open when sigmoid(w . e + b) >= threshold
    metrics: GateMetrics
    layer_scores: dict[int, float]
    # Held-out queries beyond dilemma wording: per kind {"n", "open_rate"}, and overall
    # precision / recall (value-related kinds vs value-neutral choices).
    by_kind: dict[str, dict[str, float]] = field(default_factory=dict)

    def scores(self, states: np.ndarray) -> np.ndarray:
        """Gate probabilities for states of shape (n, hidden)."""
        z = states.astype(np.float64) @ self.weight.astype(np.float64) + self.bias
        return sigmoid_np(z)


def dilemma_split(ids: list[str]) -> tuple[list[int], list[int]]:
    """Deterministic halves of the test dilemmas: odd numbers calibrate the gate, even test."""
    calib: list[int] = []
    test: list[int] = []
    for i, ident in enumerate(ids):
        number = int(ident.rsplit("-", 1)[-1]) if ident.rsplit("-", 1)[-1].isdigit() else i
        (calib if number % 2 else test).append(i)
    return calib, test


def query_split(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unrelated queries: 50% train, 25% calibration, 25% test (interleaved, deterministic)."""
    idx = np.arange(n)
    return idx[idx % 4 < 2], idx[idx % 4 == 2], idx[idx % 4 == 3]


def kind_split(kinds: list[str]) -> tuple[list[int], list[int], list[int]]:
    """Per kind, in file order: 50% train, 25% calibration, 25% test (interleaved)."""
    seen: dict[str, int] = {}
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for i, kind in enumerate(kinds):
        k = seen.get(kind, 0)
        seen[kind] = k + 1
        parts[0 if k % 4 < 2 else 1 if k % 4 == 2 else 2].append(i)
    return parts


def kind_report(kinds: list[str], opened: np.ndarray) -> dict[str, dict[str, float]]:
    """Open rate per kind and precision / recall of related kinds against neutral ones."""
    out: dict[str, dict[str, float]] = {}
    for kind in dict.fromkeys(kinds):
        sel = np.array([k == kind for k in kinds])
        out[kind] = {"n": int(sel.sum()), "open_rate": round(float(opened[sel].mean()), 4)}
    related = np.array([k != "neutral-choice" for k in kinds])
    if related.any() and (~related).any():
        m = metrics_at(opened[related].astype(float), opened[~related].astype(float), 0.5)
        out["all"] = {"n": len(kinds), "precision": round(m.precision, 4),
                      "recall": round(m.recall, 4)}
    return out


def metrics_at(related: np.ndarray, unrelated: np.ndarray, threshold: float) -> GateMetrics:
    tp = int((related >= threshold).sum())
    fp = int((unrelated >= threshold).sum())
    fn = len(related) - tp
    precision = tp / max(1, tp + fp)
    recall = tp / max(1, tp + fn)
    f1 = 2 * precision * recall / max(1e-12, precision + recall)
    return GateMetrics(precision, recall, f1, fp / max(1, len(unrelated)), len(related),
                       len(unrelated))


def calibrate_threshold(related: np.ndarray, unrelated: np.ndarray) -> float:
    """The threshold with the best F1 on calibration data.

    Every threshold between two neighbouring scores gives the same F1; of the best
    interval, take its middle in logit space (the widest margin to both classes), not its
    edge, so that queries a little unlike the calibration data are not cut off.
    """
    scores = np.unique(np.r_[related, unrelated])
    if len(scores) == 0:
        return 0.5
    # Candidate cuts: midpoints between neighbouring scores (plus both ends).
    z = np.log(np.clip(scores, 1e-9, 1 - 1e-9) / np.clip(1 - scores, 1e-9, 1))
    cuts = np.r_[z[0] - 1.0, (z[:-1] + z[1:]) / 2, z[-1] + 1.0]
    f1s = np.array([metrics_at(related, unrelated, float(sigmoid_np(c))).f1
                    for c in cuts])
    best = np.flatnonzero(f1s >= f1s.max() - 1e-12)
    # The longest run of consecutive best cuts; its middle in logit space.
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
    run = max(runs, key=lambda r: cuts[r[-1]] - cuts[r[0]] if len(r) > 1 else 0.0)
    middle = (cuts[run[0]] + cuts[run[-1]]) / 2
    return float(sigmoid_np(middle))


def train_gate(
    train_related: np.ndarray,  # (n, layers, hidden)
    train_unrelated: np.ndarray,
    calib_related: np.ndarray,
    calib_unrelated: np.ndarray,
    test_related: np.ndarray,
    test_unrelated: np.ndarray,
    layers: list[int],
) -> Gate:
    """Fit one probe per candidate layer, keep the layer with the best calibration F1."""
    y = np.r_[np.ones(len(train_related)), np.zeros(len(train_unrelated))]
    best: Gate | None = None
    scores: dict[int, float] = {}
    for j, layer in enumerate(layers):
        x = np.concatenate([train_related[:, j], train_unrelated[:, j]])
        w, b = fit_probe(x, y, c=0.1)
        candidate = Gate(layer, w, b, 0.5, GateMetrics(0, 0, 0, 0, 0, 0), {})
        r, u = candidate.scores(calib_related[:, j]), candidate.scores(calib_unrelated[:, j])
        candidate.threshold = calibrate_threshold(r, u)
        scores[layer] = metrics_at(r, u, candidate.threshold).f1
        if best is None or scores[layer] > scores[best.layer]:
            best = candidate
            best.metrics = metrics_at(candidate.scores(test_related[:, j]),
                                      candidate.scores(test_unrelated[:, j]), candidate.threshold)
    assert best is not None
    best.layer_scores = scores
    return best
