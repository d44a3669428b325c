"""Use an optimized BLAS (OpenBLAS) for MLX's CPU backend on Linux.

The `mlx-cpu` wheel links a reference BLAS; MLX calls `cblas_sgemm`, so preloading
Debian's OpenBLAS (`libopenblas0-pthread`) makes float32 matmuls 2-3x faster. In front of
it goes a small shim (`native/gemv_forward.c`, built once with the system C compiler)
that sends the matrix-vector products of decoding to SGEMV: OpenBLAS 0.3.21 runs them
through GEMM 3.5x slower. A preload only takes effect at process start, so the CLI
re-executes itself once with LD_PRELOAD. Set CONVA_MLX_BLAS=reference to opt out of both,
CONVA_MLX_BLAS=openblas to skip the shim.
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from conva_mlx.fsutil import atomic_path, cache_dir, sha256_text

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
)
_MARKER = "CONVA_MLX_BLAS_REEXEC"
SHIM_SOURCE = Path(__file__).parent / "native" / "gemv_forward.c"


def find_openblas() -> str | None:
    for cand in OPENBLAS_CANDIDATES:
        if Path(cand).is_file():
            return cand
    return None


def gemv_shim() -> str | None:
    """Path of the compiled GEMM-to-GEMV shim, built on first use; None without a compiler."""
    source = SHIM_SOURCE.read_text()
    digest = sha256_text(source, platform.machine())[:12]
    lib = cache_dir() / "native" / f"libconva_gemv-{digest}.so"
    if lib.is_file():
        return str(lib)
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None
    try:
        with atomic_path(lib) as tmp:
            subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(tmp),
                            str(SHIM_SOURCE), "-ldl"], check=True, capture_output=True,
                           timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None  # plain OpenBLAS still works, only decoding is slower
    return str(lib)


def preload_libraries(mode: str | None = None) -> list[str]:
    """The libraries to preload, in order (shim first so its cblas_sgemm wins).

    `mode` is a CONVA_MLX_BLAS value (default: this process's).
    """
    mode = os.environ.get("CONVA_MLX_BLAS", "") if mode is None else mode
    lib = find_openblas()
    if not sys.platform.startswith("linux") or mode == "reference" or lib is None:
        return []
    shim = None if mode == "openblas" else gemv_shim()
    return [p for p in (shim, lib) if p]


def _mapped_libraries() -> str:
    try:
        return Path("/proc/self/maps").read_text()
    except OSError:
        return ""


def preload_active() -> bool:
    """True if every library `preload_libraries` names is mapped into this process."""
    maps = _mapped_libraries()  # lists real paths: resolve the symlinks first
    return all(os.path.realpath(p) in maps for p in preload_libraries())


def gemv_forwarded_calls() -> int | None:
    """GEMMs the shim has sent to GEMV in this process; None if the shim is not loaded."""
    try:
        counter = ctypes.CDLL(None).conva_gemv_forwarded
    except (OSError, AttributeError):
        return None
    counter.restype = ctypes.c_long
    return int(counter())


def preload_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment with the BLAS libraries preloaded, if available (for subprocesses)."""
    env = dict(os.environ if env is None else env)
    current = [p for p in env.get("LD_PRELOAD", "").split(":") if p]
    wanted = [p for p in preload_libraries(env.get("CONVA_MLX_BLAS", "")) if p not in current]
    if wanted:
        env["LD_PRELOAD"] = ":".join(wanted + current)
    return env


def load_in_process() -> bool:
    """Load OpenBLAS (and the shim in front of it) into this process before MLX is imported,
    so library users get the CLI's fast path without LD_PRELOAD. Loaded with RTLD_GLOBAL,
    their `cblas_*` symbols win over the reference BLAS when MLX's library is loaded later.
    Returns whether they are in place (False: MLX already imported, not Linux, opted out)."""
    libs = preload_libraries()
    if not libs or preload_active():
        return bool(libs)
    if "mlx.core" in sys.modules:
        return False
    try:
        # in `libs` order: the shim first, so that its cblas_sgemm is the one MLX binds
        handles = [ctypes.CDLL(p, mode=ctypes.RTLD_GLOBAL) for p in libs]
        if len(libs) == 2:  # the shim: hand it the real entry points (RTLD_NEXT cannot)
            shim, blas = handles
            shim.conva_gemv_bind(ctypes.cast(blas.cblas_sgemm, ctypes.c_void_p),
                                 ctypes.cast(blas.cblas_sgemv, ctypes.c_void_p))
    except (OSError, AttributeError):
        return False
    return True


def maybe_reexec_with_openblas() -> None:
    """Re-execute the current command once with OpenBLAS preloaded (Linux only)."""
    if not sys.platform.startswith("linux") or os.environ.get("CONVA_MLX_BLAS") == "reference":
        return
    if os.environ.get(_MARKER) or preload_active():
        return
    env = preload_env()
    env[_MARKER] = "1"
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:
        return  # keep going with the reference BLAS


if __name__ == "__main__":  # `python -m conva_mlx.models.blas` prints the LD_PRELOAD value to use
    print(":".join(preload_libraries()))
