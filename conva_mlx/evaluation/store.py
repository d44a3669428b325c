"""The evaluation stores: append-only JSONL records keyed by what produced them (resumable)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conva_mlx.fsutil import append_jsonl, repair_jsonl_tail


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
