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
    """A CLI process started without LD_PRELOAD has both libraries (loaded in-process when
    conva_mlx is imported, else by re-executing itself once)."""
    script = ("from conva_mlx.models.blas import maybe_reexec_with_openblas, gemv_forwarded_calls, "
              "preload_active\nmaybe_reexec_with_openblas()\n"
              "print(preload_active(), gemv_forwarded_calls())")
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "CONVA_MLX_BLAS", "CONVA_MLX_BLAS_REEXEC")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.split() == ["True", "0"]


def _plain_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "CONVA_MLX_BLAS", "CONVA_MLX_BLAS_REEXEC")}
    return {**env, **extra}


def test_importing_conva_mlx_gives_a_plain_interpreter_the_fast_path() -> None:
    """No LD_PRELOAD, no re-exec: `import conva_mlx` loads the shim and OpenBLAS before MLX,
    and MLX's matmuls go through them, exactly."""
    script = "import conva_mlx\n" + _SCRIPT + textwrap.dedent("""
        from conva_mlx.models.blas import preload_active
        assert preload_active()
    """)
    out = subprocess.run([sys.executable, "-W", "error", "-c", script], env=_plain_env(),
                         capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["forwarded"] is not None and result["forwarded"] >= 6
    for name, err in result["errors"].items():
        assert err < 1e-4, f"{name}: max error {err}"


def test_mlx_imported_first_gets_one_line_with_the_fix() -> None:
    script = "import mlx.core\nimport conva_mlx\n"
    out = subprocess.run([sys.executable, "-c", script], env=_plain_env(),
                         capture_output=True, text=True, timeout=120, check=True)
    assert "LD_PRELOAD=$(python -m conva_mlx.models.blas)" in out.stderr
    assert "import conva_mlx first" in out.stderr
    quiet = subprocess.run([sys.executable, "-W", "error", "-c", script],
                           env=_plain_env(CONVA_MLX_BLAS="reference"), capture_output=True,
                           text=True, timeout=120)
    assert quiet.returncode == 0, quiet.stderr  # opted out: no warning
