"""Resolve `--pack` arguments (a directory or hf://REPO_ID) and load model + pack together."""

from __future__ import annotations

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
    if not path.exists():
        raise ConvaError(f"{path}: no such pack directory")
    return path


def open_pack(spec: str) -> Pack:
    return load_pack(resolve_pack_path(spec))


def load_model_for_pack(model_spec: str, dtype: str, pack: Pack) -> LoadedModel:
    lm = load_model(model_spec, dtype)
    pack.check_model(lm.model_id, lm.fingerprint)
    return lm
