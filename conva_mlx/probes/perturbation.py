"""The minimal perturbation of ConVA, as plain mx.array code (no host syncs).

For one value with probe (w, b) and target probability P0, the smallest L2 change that
makes sigmoid(w . (e + delta) + b) >= P0 is

    eps = max(0, (logit(P0) - b - w . e) / |w|),   delta = eps * w / |w|.

Steering away asks for P <= 1 - P0 instead (eps <= 0). Several values at one layer form
an intersection of half-spaces; the minimum-norm delta onto it is found with Dykstra's
alternating projections (a fixed number of sweeps, deterministic, in the order given).
With one value a single projection is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

DYKSTRA_SWEEPS = 30


def logit(p: float) -> float:
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {p}")
    return math.log(p / (1.0 - p))


@dataclass(frozen=True)
class HalfSpaces:
    """Constraints a_i . x >= c_i for the K values steered at one layer."""

    normals: mx.array  # (K, hidden)
    offsets: mx.array  # (K,)

    @classmethod
    def from_probes(cls, weights: mx.array, biases: mx.array, p0: list[float],
                    away: list[bool]) -> HalfSpaces:
        """Probe constraints: toward -> w.x + b >= logit(P0); away -> w.x + b <= logit(1-P0)."""
        sign = mx.array([-1.0 if a else 1.0 for a in away], dtype=weights.dtype)
        target = mx.array([logit(1 - p) if a else logit(p) for p, a in zip(p0, away)],
                          dtype=weights.dtype)
        normals = weights * sign[:, None]
        offsets = sign * (target - biases)
        return cls(normals, offsets)


def _project(x: mx.array, a: mx.array, c: mx.array, a_sq: mx.array) -> mx.array:
    """Project x (..., hidden) onto {a . x >= c}."""
    gap = c - (x * a).sum(axis=-1, keepdims=True)
    return x + mx.maximum(gap, 0.0) / a_sq * a


def minimal_delta(e: mx.array, cons: HalfSpaces) -> mx.array:
    """Minimum-norm delta with a_i . (e + delta) >= c_i for all i; e is (..., hidden)."""
    e32 = e.astype(mx.float32)
    normals = cons.normals.astype(mx.float32)
    offsets = cons.offsets.astype(mx.float32)
    a_sq = (normals * normals).sum(axis=-1)
    k = normals.shape[0]
    if k == 1:
        return (_project(e32, normals[0], offsets[0], a_sq[0]) - e32).astype(e.dtype)
    x = e32
    corrections = [mx.zeros_like(e32) for _ in range(k)]
    for _ in range(DYKSTRA_SWEEPS):
        for i in range(k):
            y = _project(x + corrections[i], normals[i], offsets[i], a_sq[i])
            corrections[i] = x + corrections[i] - y
            x = y
    return (x - e32).astype(e.dtype)


def sigmoid_np(z: np.ndarray | float) -> np.ndarray:
    """The probes' sigmoid on the host (numpy), for heads and thresholds read there."""
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0))))


def eps_np(states: np.ndarray, w: np.ndarray, b: float, p0: float) -> np.ndarray:
    """ConVA's eps for one probe on the host, float64: max(0, (logit(P0) - b - w.e) / |w|)
    per state row (0 for a zero probe)."""
    w = w.astype(np.float64)
    norm = float(np.linalg.norm(w))
    if norm == 0.0:
        return np.zeros(len(states))
    z = states.astype(np.float64) @ w + float(b)
    return np.asarray(np.maximum(0.0, (logit(p0) - z) / norm))


def probe_probability(e: mx.array, w: mx.array, b: mx.array) -> mx.array:
    """sigmoid(w . e + b) for each probe row of w; e is (..., hidden) -> (..., K)."""
    return mx.sigmoid(e.astype(mx.float32) @ w.astype(mx.float32).T + b.astype(mx.float32))
