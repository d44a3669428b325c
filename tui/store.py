"""Where the chat keeps its state: the last pack per model fingerprint, extracted packs."""

from __future__ import annotations

import json
from pathlib import Path

from conva_mlx.fsutil import atomic_write_json

STATE_FILE = "chat.json"


def packs_dir(state_dir: Path, fingerprint: str) -> Path:
    """Where a pack extracted from the chat for this model goes."""
    return state_dir / "packs" / fingerprint


def _read(state_dir: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("last_pack"), dict):
        return {}
    return {"last_pack": {str(k): str(v) for k, v in data["last_pack"].items()}}


def remember_pack(state_dir: Path, fingerprint: str, pack_path: Path) -> None:
    data = _read(state_dir)
    data.setdefault("last_pack", {})[fingerprint] = str(Path(pack_path).resolve())
    atomic_write_json(state_dir / STATE_FILE, data)


def find_pack(state_dir: Path, fingerprint: str) -> Path | None:
    """The remembered pack for this model, else one extracted earlier, else None."""
    last = _read(state_dir).get("last_pack", {}).get(fingerprint)
    if last and (Path(last) / "pack.json").is_file():
        return Path(last)
    extracted = packs_dir(state_dir, fingerprint)
    return extracted if (extracted / "pack.json").is_file() else None
