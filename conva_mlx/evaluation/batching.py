"""Batches that share their steering: items grouped by (method, value), in order, then cut."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def batches_by_key(keyed: list[tuple[tuple[str, str], T]], size: int
                   ) -> list[tuple[tuple[str, str], list[T]]]:
    """Group items by (method, value), keeping order, and cut each group into batches."""
    groups: dict[tuple[str, str], list[T]] = {}
    for key, item in keyed:
        groups.setdefault(key, []).append(item)
    return [(key, items[i:i + size]) for key, items in groups.items()
            for i in range(0, len(items), size)]
