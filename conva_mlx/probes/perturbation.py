"""The minimal perturbation of ConVA, as plain mx.array code (no host syncs).

For one value with probe (w, b) and target probability P0, the smallest L2 change that
makes sigmoid(w . (e + delta) + b) >= P0 is

    eps = max(0, (logit(P0) - b - w . e) / |w|),   delta = eps * w / |w|.

Steering away asks for P <= 1 - P0 instead (eps <= 0). Several values at one layer form
an intersection of half-spaces; the minimum-norm delta onto it is found with Dykstra's
alternating projections (a fixed number of sweeps, deterministic, in the order given).
With one value a single projection is exact.

A constraint may also carry a direction u to move along instead of its normal (the
"mean-diff" recipe: u = the unit mean difference of the pair states). The move that just
satisfies a . (x + t u) >= c is t = max(0, c - a . x) / (a . u); with u = a it is the
projection above.
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
    moves: mx.array | None = None  # (K, hidden) directions to move along; None = normals

    @classmethod
    def from_probes(cls, weights: mx.array, biases: mx.array, p0: list[float],
                    away: list[bool], moves: mx.array | None = None) -> HalfSpaces:
        """Probe constraints: toward -> w.x + b >= logit(P0); away -> w.x + b <= logit(1-P0).

        `moves` (K, hidden), given toward the value, are flipped with the constraint."""
        sign = mx.array([-1.0 if a else 1.0 for a in away], dtype=weights.dtype)
        target = mx.array([logit(1 - p) if a else logit(p) for p, a in zip(p0, away)],
                          dtype=weights.dtype)
        normals = weights * sign[:, None]
        offsets = sign * (target - biases)
        return cls(normals, offsets, None if moves is None else moves * sign[:, None])


def _project(x: mx.array, a: mx.array, c: mx.array, a_sq: mx.array,
             u: mx.array | None = None) -> mx.array:
    """Move x (..., hidden) onto {a . x >= c}: along a (projection), or along u with
    a . u = a_sq."""
    gap = c - (x * a).sum(axis=-1, keepdims=True)
    return x + mx.maximum(gap, 0.0) / a_sq * (a if u is None else u)


def minimal_delta(e: mx.array, cons: HalfSpaces) -> mx.array:
    """Minimum-norm delta with a_i . (e + delta) >= c_i for all i; e is (..., hidden)."""
    e32 = e.astype(mx.float32)
    normals = cons.normals.astype(mx.float32)
    offsets = cons.offsets.astype(mx.float32)
    k = normals.shape[0]
    if cons.moves is not None:
        return _move_along(e32, normals, offsets, cons.moves.astype(mx.float32)).astype(e.dtype)
    a_sq = (normals * normals).sum(axis=-1)
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


def _move_along(e: mx.array, normals: mx.array, offsets: mx.array, moves: mx.array
                ) -> mx.array:
    """Each constraint in turn, moving along its own direction (a fixed number of sweeps:
    with several values the moves are not orthogonal, so a later one can undo an earlier)."""
    a_u = (normals * moves).sum(axis=-1)
    k = normals.shape[0]
    x = e
    for _ in range(1 if k == 1 else DYKSTRA_SWEEPS):
        for i in range(k):
            x = _project(x, normals[i], offsets[i], a_u[i], moves[i])
    return x - e


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
