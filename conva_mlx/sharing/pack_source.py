"""Where a pack comes from: a local directory or hf://REPO_ID (pulled into the Hub cache)."""

from __future__ import annotations

import errno
from pathlib import Path

from conva_mlx.errors import ConvaError
from conva_mlx.packs.pack import Pack, load_pack
from conva_mlx.sharing.hub import (
    pull_pack,  # huggingface_hub itself loads only when a Hub pack is pulled
)


def resolve_pack_path(spec: str | Path) -> Path:
    """The local directory of a pack spec; hf://REPO_ID is pulled (or read from the cache)."""
    if isinstance(spec, str) and spec.startswith("hf://"):
        return pull_pack(spec[len("hf://"):])
    path = Path(spec).expanduser()
    try:
        path.resolve(strict=True)
    except RuntimeError as exc:  # Python < 3.13 reports loops as RuntimeError
        raise ConvaError(f"{path}: symbolic link loop") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConvaError(f"{path}: symbolic link loop") from exc
        if path.is_symlink():
            raise ConvaError(f"{path}: broken symbolic link") from exc
        raise ConvaError(f"{path}: no such pack directory") from exc
    if not path.is_dir():
        raise ConvaError(f"{path}: not a directory (a pack is a directory with pack.json)")
    return path


def open_pack(spec: str | Path) -> Pack:
    """Load a pack from a directory or hf://REPO_ID, checking its checksums."""
    return load_pack(resolve_pack_path(spec))
