"""Resolve `--pack` arguments (a directory or hf://REPO_ID) and load model + pack together."""

from __future__ import annotations

import errno
from pathlib import Path

from ..errors import ConvaError
from ..loading import LoadedModel, load_model
from ..pack import Pack, load_pack


def resolve_pack_path(spec: str) -> Path:
    if spec.startswith("hf://"):
        try:
            from ..hub import pull_pack
        except ImportError as exc:  # pragma: no cover - hub module ships with the package
            raise ConvaError("Hub support is not available") from exc
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


def open_pack(spec: str) -> Pack:
    return load_pack(resolve_pack_path(spec))


def load_model_for_pack(model_spec: str, dtype: str, pack: Pack) -> LoadedModel:
    lm = load_model(model_spec, dtype)
    pack.check_model(lm.model_id, lm.fingerprint)
    return lm
