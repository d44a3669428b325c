"""The minimal perturbation is the minimum-norm solution, for one and several values."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

from conva_mlx.probes.perturbation import HalfSpaces, logit, minimal_delta

RNG = np.random.default_rng(0)


def _probe(hidden: int = 32) -> tuple[np.ndarray, float]:
    return RNG.normal(size=hidden).astype(np.float32), float(RNG.normal())


def _cons(ws: list[np.ndarray], bs: list[float], p0: list[float], away: list[bool]) -> HalfSpaces:
    return HalfSpaces.from_probes(mx.array(np.stack(ws)), mx.array(np.array(bs, np.float32)),
                                  p0, away)


def _p(e: np.ndarray, w: np.ndarray, b: float) -> float:
    return 1 / (1 + math.exp(-(float(e @ w) + b)))


def test_delta_matches_the_closed_form() -> None:
    for _ in range(20):
        w, b = _probe()
        e = RNG.normal(size=32).astype(np.float32) * 3
        p0 = 0.9
        d = np.array(minimal_delta(mx.array(e), _cons([w], [b], [p0], [False])))
        eps = max(0.0, (logit(p0) - b - float(w @ e)) / float(np.linalg.norm(w)))
        np.testing.assert_allclose(d, eps * w / np.linalg.norm(w), atol=1e-5)
        assert _p(e + d, w, b) >= p0 - 1e-5


def test_delta_is_minimum_norm_among_feasible_moves() -> None:
    w, b = _probe()
    e = -w * 0.5
    d = np.array(minimal_delta(mx.array(e), _cons([w], [b], [0.95], [False])))
    for _ in range(200):  # random feasible deltas are never shorter
        r = d + RNG.normal(size=32).astype(np.float32) * 0.3
        if _p(e + r, w, b) >= 0.95:
            assert np.linalg.norm(r) >= np.linalg.norm(d) - 1e-5


def test_state_already_at_target_is_untouched() -> None:
    w, b = _probe()
    e = w * 10  # probability ~ 1
    d = np.array(minimal_delta(mx.array(e), _cons([w], [b], [0.9], [False])))
    assert np.all(d == 0)


def test_steering_away_caps_the_probability() -> None:
    w, b = _probe()
    e = w * 2
    d = np.array(minimal_delta(mx.array(e), _cons([w], [b], [0.9], [True])))
    assert _p(e + d, w, b) <= 0.1 + 1e-5
    assert float(d @ w) < 0  # moved against the value direction


def test_several_values_satisfy_every_constraint_with_less_norm_than_sequential() -> None:
    (w1, b1), (w2, b2), (w3, b3) = _probe(), _probe(), _probe()
    e = -(w1 + w2) * 0.3
    cons = _cons([w1, w2, w3], [b1, b2, b3], [0.9, 0.85, 0.8], [False, False, True])
    d = np.array(minimal_delta(mx.array(e), cons))
    assert _p(e + d, w1, b1) >= 0.9 - 1e-3
    assert _p(e + d, w2, b2) >= 0.85 - 1e-3
    assert _p(e + d, w3, b3) <= 0.2 + 1e-3
    # Compare with a general-purpose QP solver: same minimum norm.
    from scipy.optimize import minimize

    a = np.array(cons.normals, dtype=np.float64)
    c = np.array(cons.offsets, dtype=np.float64)
    res = minimize(lambda x: x @ x, np.zeros(32), jac=lambda x: 2 * x, method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda x, i=i: a[i] @ (e + x) - c[i]}
                                for i in range(3)], options={"ftol": 1e-12, "maxiter": 500})
    assert res.success
    assert abs(np.linalg.norm(d) - np.linalg.norm(res.x)) < 1e-3 * np.linalg.norm(res.x)


def test_batched_positions_get_their_own_delta() -> None:
    w, b = _probe()
    e = np.stack([w * 5, -w * 5]).astype(np.float32)
    d = np.array(minimal_delta(mx.array(e), _cons([w], [b], [0.9], [False])))
    assert np.all(d[0] == 0)
    assert np.linalg.norm(d[1]) > 0


def test_gate_threshold_sits_in_the_middle_of_the_margin() -> None:
    from conva_mlx.probes.gate import calibrate_threshold, metrics_at

    related = np.array([0.9, 0.95, 0.99])
    unrelated = np.array([0.01, 0.05, 0.1])
    t = calibrate_threshold(related, unrelated)
    assert metrics_at(related, unrelated, t).f1 == 1.0
    assert abs(t - 0.5) < 0.05  # logit-space middle of (0.1, 0.9)
