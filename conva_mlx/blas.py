"""Use an optimized BLAS (OpenBLAS) for MLX's CPU backend on Linux.

The `mlx-cpu` wheel links a reference BLAS; MLX calls `cblas_sgemm`, so preloading
Debian's OpenBLAS (`libopenblas0-pthread`) makes float32 matmuls 2-3x faster. A preload
only takes effect at process start, so the CLI re-executes itself once with LD_PRELOAD.
Set CONVA_MLX_BLAS=reference to opt out.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
)
_MARKER = "CONVA_MLX_BLAS_REEXEC"


def find_openblas() -> str | None:
    for cand in OPENBLAS_CANDIDATES:
        if Path(cand).is_file():
            return cand
    return None


def openblas_active() -> bool:
    """True if an OpenBLAS library is mapped into this process."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return "openblas" in maps


def preload_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment with OpenBLAS preloaded, if available (for subprocesses)."""
    env = dict(os.environ if env is None else env)
    lib = find_openblas()
    if lib and sys.platform.startswith("linux") and lib not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    return env


def maybe_reexec_with_openblas() -> None:
    """Re-execute the current command once with OpenBLAS preloaded (Linux only)."""
    if not sys.platform.startswith("linux") or os.environ.get("CONVA_MLX_BLAS") == "reference":
        return
    if os.environ.get(_MARKER) or openblas_active() or find_openblas() is None:
        return
    env = preload_env()
    env[_MARKER] = "1"
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:
        return  # keep going with the reference BLAS
