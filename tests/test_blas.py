"""The GEMM-to-GEMV shim: MLX matmuls of every vector shape stay exact with it preloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conva_mlx.models.blas import find_openblas, gemv_shim, preload_env

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or find_openblas() is None or gemv_shim() is None,
    reason="needs Linux, Debian's OpenBLAS and a C compiler")

# MLX vs numpy for shapes where M == 1 or N == 1 reach the shim, in the transpose
# combinations MLX passes (views, not copies), plus addmm (beta != 0), a strided vector
# and a plain GEMM that must pass through untouched.
_SCRIPT = textwrap.dedent("""
    import json
    import mlx.core as mx
    import numpy as np
    from conva_mlx.models.blas import gemv_forwarded_calls

    rng = np.random.default_rng(0)
    def arr(*shape):
        return rng.standard_normal(shape).astype(np.float32)
    row, w, w_t, c = arr(1, 37), arr(53, 37), arr(37, 53), arr(1, 53)
    rows3, cols, many = arr(4, 1, 37), arr(37, 3), arr(5, 37)
    m = mx.array
    cases = {  # name: (MLX result, numpy float32 result)
        "row @ w.T": (m(row) @ m(w).T, row @ w.T),
        "row @ w_t": (m(row) @ m(w_t), row @ w_t),
        "w @ col": (m(w) @ m(row).T, w @ row.T),
        "w_t.T @ col": (m(w_t).T @ m(row).T, w_t.T @ row.T),
        "transposed row @ w.T": (m(row.T).T @ m(w).T, row @ w.T),
        "batched rows": (m(rows3) @ m(w).T, rows3 @ w.T),
        "strided column": (m(w) @ m(cols)[:, 1:2], w @ cols[:, 1:2]),
        "addmm beta": (mx.addmm(m(c), m(row), m(w).T, alpha=0.5, beta=2.0),
                       2.0 * c + 0.5 * (row @ w.T)),
        "gemm passes through": (m(many) @ m(w).T, many @ w.T),
    }
    errors = {k: float(np.abs(np.array(got) - want).max()) for k, (got, want) in cases.items()}
    print(json.dumps({"errors": errors, "forwarded": gemv_forwarded_calls()}))
""")



def _run(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    result: dict = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_shim_forwards_vector_products_and_stays_exact() -> None:
    env = preload_env({k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
    assert gemv_shim() in env["LD_PRELOAD"].split(":")
    result = _run(env)
    assert result["forwarded"] is not None and result["forwarded"] >= 6
    for name, err in result["errors"].items():
        assert err < 1e-4, f"{name}: max error {err}"


def test_without_shim_nothing_is_forwarded() -> None:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["CONVA_MLX_BLAS"] = "openblas"
    env = preload_env(env)
    assert "libconva_gemv" not in env.get("LD_PRELOAD", "")
    result = _run(env)
    assert result["forwarded"] is None
    for name, err in result["errors"].items():
        assert err < 1e-4, f"{name}: max error {err}"


def test_cli_reexec_preloads_shim_and_openblas() -> None:
    """A process started without LD_PRELOAD re-executes itself once with both libraries."""
    script = ("from conva_mlx.models.blas import maybe_reexec_with_openblas, gemv_forwarded_calls, "
              "preload_active\nmaybe_reexec_with_openblas()\n"
              "print(preload_active(), gemv_forwarded_calls())")
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "CONVA_MLX_BLAS", "CONVA_MLX_BLAS_REEXEC")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.split() == ["True", "0"]
