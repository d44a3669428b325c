"""The CPU SwiGLU: exact to float32 rounding, installed on every supported architecture."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from conva_mlx.models.cpu_kernels import fast_exp, fast_silu, fast_swiglu, install_fast_swiglu
from conva_mlx.models.loading import LoadedModel
from tests.tiny_models import ARCHS


def test_fast_exp_matches_float64_over_the_float32_range() -> None:
    x = np.linspace(-87.0, 88.0, 1_000_001, dtype=np.float32)
    got = np.array(fast_exp(mx.array(x))).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 3e-7


def test_fast_exp_saturates_instead_of_overflowing() -> None:
    got = np.array(fast_exp(mx.array([-1e4, -100.0, 100.0, 1e4], dtype=mx.float32)))
    assert np.all(np.isfinite(got)) and got[0] >= 0 and got[-1] > 1e38


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16, mx.float16])
def test_fast_silu_and_swiglu_match_mlx(dtype: mx.Dtype) -> None:
    rng = np.random.default_rng(0)
    gate = mx.array((rng.standard_normal((7, 300)) * 6).astype(np.float32)).astype(dtype)
    up = mx.array(rng.standard_normal((7, 300)).astype(np.float32)).astype(dtype)
    want_silu = np.array(nn.silu(gate.astype(mx.float32)))
    got_silu = fast_silu(gate)
    assert got_silu.dtype == dtype
    tol = 2e-6 if dtype == mx.float32 else 2e-2
    scale = np.abs(want_silu).max()
    assert np.abs(np.array(got_silu.astype(mx.float32)) - want_silu).max() < tol * scale
    got = np.array(fast_swiglu(gate, up).astype(mx.float32))
    want = np.array((nn.silu(gate) * up).astype(mx.float32))
    assert np.abs(got - want).max() < tol * np.abs(want).max() * 4


def test_loaded_models_get_the_fast_swiglu_with_unchanged_output(tiny_lm: LoadedModel) -> None:
    """load_model installs it on CPU; swapping the class back gives the same logits."""
    mlps = [m for _, m in tiny_lm.model.named_modules() if hasattr(m, "gate_proj")]
    assert mlps and all(type(m).__name__.startswith("FastCpu") for m in mlps)
    tokens = mx.array([[1, 5, 9, 200, 33, 7]])
    fast = np.array(tiny_lm.model(tokens))
    original = [type(m).__mro__[1] for m in mlps]
    for m, cls in zip(mlps, original):
        m.__class__ = cls
    plain = np.array(tiny_lm.model(tokens))
    assert install_fast_swiglu(tiny_lm.model) == len(mlps)  # and the fixture is as before
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5 * np.abs(plain).max())
    assert tiny_lm.architecture in ARCHS


def test_parameters_and_names_are_untouched_by_the_swap(default_lm: LoadedModel) -> None:
    names = [k for k, _ in default_lm.model.named_modules()]
    assert any(k.endswith("mlp") for k in names)
    mlp = default_lm.model.model.layers[0].mlp
    assert set(mlp.keys()) == {"gate_proj", "up_proj", "down_proj"}
    assert isinstance(mlp, nn.Module) and type(mlp).__name__ == "FastCpuMLP"
