"""The evaluation stores: append-only JSONL records keyed by what produced them (resumable)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conva_mlx.errors import ConvaError
from conva_mlx.fsutil import append_jsonl, atomic_write_json, repair_jsonl_tail


class JsonlStore:
    """Append-only JSONL keyed records, resumable: a torn last line (killed run) is dropped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        repair_jsonl_tail(path)
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(r, dict) and "key" in r:
                        self.records[r["key"]] = r

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def append(self, record: dict[str, Any]) -> None:
        append_jsonl(self.path, record)
        self.records[record["key"]] = record


def saved_settings(path: Path, want: dict[str, Any]) -> dict[str, Any] | None:
    """The settings a run directory was started with (its manifest at `path`), or None
    after writing `want` there when the run is new. A run compares them with `want` to
    refuse mixing records made with other settings into one directory."""
    if not path.is_file():
        atomic_write_json(path, want)
        return None
    try:
        have: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConvaError(f"{path}: unreadable ({exc}); remove it or use another --out"
                         ) from exc
    return have
