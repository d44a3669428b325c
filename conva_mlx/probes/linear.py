"""Per-layer linear probes, value vectors, CAA vectors and steering-layer selection.

Probe at layer l: P_l(e) = sigmoid(w_l . e + b_l), positive = 1, in the raw hidden-state
space, so that the minimal-perturbation formula applies directly. Fitted either on the raw
features (the reference's train_cav.py: sklearn defaults, L2, C = 1) or on standardised
features with the weights mapped back (conva-mlx 0.1); the L2 penalty then acts on different
scales, so |w| and the perturbation it implies differ. Value vector v_l = w_l / |w_l|.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

from conva_mlx.progress import ProgressCallback, progress_bar

MIN_ACCURACY = 0.9
EXCLUDE_LAST = 5
MIN_LAYERS = 3


@dataclass
class ProbeSet:
    """Probes for one value at every block (index = block index)."""

    weights: np.ndarray  # (layers, hidden) float32
    biases: np.ndarray  # (layers,) float32
    accuracies: np.ndarray  # (layers,) held-out accuracy
    train_accuracies: np.ndarray  # (layers,)
    caa: np.ndarray  # (layers, hidden): mean(positive - negative), unnormalised
    n_train_pairs: int = 0
    n_test_pairs: int = 0
    c: list[float] | None = None  # the L2 inverse strength used per block (when known)

    @property
    def directions(self) -> np.ndarray:
        norms = np.linalg.norm(self.weights, axis=1, keepdims=True)
        return self.weights / np.maximum(norms, 1e-12)


def middle_block_selection(block: list[int], recipe_name: str) -> LayerSelection:
    return LayerSelection(block, f"middle block {block[0]}-{block[-1]} by depth (recipe "
                          f"{recipe_name}, as the reference steers)")


@dataclass
class LayerSelection:
    layers: list[int]
    note: str
    fallback: bool = False
    threshold: float = MIN_ACCURACY
    excluded_last: int = EXCLUDE_LAST


def split_pairs(n_pairs: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair-aware split: both members of a pair land on the same side."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_pairs)
    n_test = max(1, round(n_pairs * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


C_GRID = (0.01, 0.1, 1.0, 10.0)  # searched when the recipe leaves C to held-out log-loss


def fit_probe(x: np.ndarray, y: np.ndarray, c: float = 1.0,
              standardise: bool = True) -> tuple[np.ndarray, float]:
    """Logistic regression, returned in raw feature space (w, b)."""
    if not standardise:
        clf = LogisticRegression(C=c, max_iter=5000)
        clf.fit(x, y)
        return clf.coef_[0].astype(np.float32), float(clf.intercept_[0])
    mu = x.mean(axis=0)
    sigma = x.std(axis=0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=2000)
    clf.fit((x - mu) / sigma, y)
    w_std = clf.coef_[0]
    w = w_std / sigma
    b = float(clf.intercept_[0] - np.dot(w_std, mu / sigma))
    return w.astype(np.float32), b


def log_loss(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: float) -> float:
    z = x.astype(np.float64) @ w.astype(np.float64) + b
    # log(1 + exp(-z)) for positives, log(1 + exp(z)) for negatives, computed stably
    signed = np.where(y > 0.5, -z, z)
    return float(np.mean(np.logaddexp(0.0, signed)))


def choose_c(pos: np.ndarray, neg: np.ndarray, standardise: bool, seed: int) -> float:
    """C with the lowest log-loss on an inner pair-split of the training pairs."""
    inner_train, inner_val = split_pairs(len(pos), 0.25, seed + 1)
    x = np.concatenate([pos[inner_train], neg[inner_train]])
    y = np.r_[np.ones(len(inner_train)), np.zeros(len(inner_train))]
    xv = np.concatenate([pos[inner_val], neg[inner_val]])
    yv = np.r_[np.ones(len(inner_val)), np.zeros(len(inner_val))]
    losses = {c: log_loss(xv, yv, *fit_probe(x, y, c, standardise)) for c in C_GRID}
    return min(losses, key=lambda c: losses[c])


def _accuracy(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: float) -> float:
    pred = (x.astype(np.float64) @ w.astype(np.float64) + b) > 0
    return float((pred == (y > 0.5)).mean())


def train_probes(
    positives: np.ndarray,
    negatives: np.ndarray,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    c: float | None = 1.0,
    standardise: bool = True,
    show_progress: bool = False,
    callback: ProgressCallback | None = None,
    description: str = "probes",
) -> ProbeSet:
    """Train one probe per layer from paired states of shape (pairs, layers, hidden).

    c None chooses C per block by held-out log-loss (an inner split of the training pairs,
    so the held-out accuracies stay untouched)."""
    n_pairs, n_layers, hidden = positives.shape
    train_idx, test_idx = split_pairs(n_pairs, test_fraction, seed)
    weights = np.zeros((n_layers, hidden), np.float32)
    biases = np.zeros(n_layers, np.float32)
    acc = np.zeros(n_layers, np.float32)
    train_acc = np.zeros(n_layers, np.float32)
    cs = np.zeros(n_layers, np.float32)
    y_train = np.r_[np.ones(len(train_idx)), np.zeros(len(train_idx))]
    y_test = np.r_[np.ones(len(test_idx)), np.zeros(len(test_idx))]
    with progress_bar(n_layers, description, show_progress, callback) as advance:
        for layer in range(n_layers):
            x_train = np.concatenate([positives[train_idx, layer], negatives[train_idx, layer]])
            x_test = np.concatenate([positives[test_idx, layer], negatives[test_idx, layer]])
            c_k = (choose_c(positives[train_idx, layer], negatives[train_idx, layer],
                            standardise, seed) if c is None else c)
            cs[layer] = c_k
            w, b = fit_probe(x_train, y_train, c_k, standardise)
            weights[layer], biases[layer] = w, b
            acc[layer] = _accuracy(x_test, y_test, w, b)
            train_acc[layer] = _accuracy(x_train, y_train, w, b)
            advance(1)
    caa = (positives[train_idx] - negatives[train_idx]).mean(axis=0).astype(np.float32)
    return ProbeSet(weights, biases, acc, train_acc, caa, len(train_idx), len(test_idx),
                    [float(x) for x in cs])


def select_layers(
    accuracies: np.ndarray,
    threshold: float = MIN_ACCURACY,
    exclude_last: int = EXCLUDE_LAST,
    min_layers: int = MIN_LAYERS,
) -> LayerSelection:
    """Layers with held-out accuracy >= threshold, excluding the last blocks.

    If fewer than `min_layers` qualify, fall back to the best-scoring middle layers
    (from a quarter of the depth up to the excluded tail), and say so.
    """
    n = len(accuracies)
    allowed = list(range(0, max(1, n - exclude_last)))
    chosen = [k for k in allowed if accuracies[k] >= threshold]
    if len(chosen) >= min_layers:
        return LayerSelection(
            chosen, f"{len(chosen)} blocks with held-out accuracy >= {threshold:.2f} "
            f"(last {exclude_last} blocks excluded)", threshold=threshold,
            excluded_last=exclude_last)
    middle = [k for k in allowed if k >= n // 4] or allowed
    best = sorted(sorted(middle, key=lambda k: -float(accuracies[k]))[:min_layers])
    accs = ", ".join(f"{k}: {accuracies[k]:.2f}" for k in best)
    return LayerSelection(
        best, f"only {len(chosen)} blocks reach accuracy {threshold:.2f}; using the "
        f"{len(best)} best middle blocks instead ({accs})", fallback=True,
        threshold=threshold, excluded_last=exclude_last)
