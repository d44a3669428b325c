"""Presets: named JSON files with the chosen values and strengths, under <state>/presets."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from conva_mlx import ConvaError
from conva_mlx.fsutil import atomic_write_json

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")


def presets_dir(state_dir: Path) -> Path:
    return state_dir / "presets"


def check_name(name: str) -> str:
    name = name.strip()
    if not _NAME.match(name) or name.endswith("."):
        raise ConvaError(f"bad preset name '{name}' (letters, digits, space, _ . -)")
    return name


def save_preset(state_dir: Path, name: str, data: dict[str, Any]) -> Path:
    path = presets_dir(state_dir) / f"{check_name(name)}.json"
    atomic_write_json(path, {"format": "conva-mlx-chat-preset", **data})
    return path


def list_presets(state_dir: Path) -> list[str]:
    d = presets_dir(state_dir)
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def load_preset(state_dir: Path, name: str) -> dict[str, Any]:
    path = presets_dir(state_dir) / f"{check_name(name)}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConvaError(f"no preset named '{name}'") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ConvaError(f"{path}: not a readable preset ({exc})") from exc
    if not isinstance(data, dict):
        raise ConvaError(f"{path}: not a preset")
    return data
