"""The prompts an evaluation runs on: a half of each value's dilemmas, or a JSONL file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from conva_mlx.data.dataset import ValueData, read_jsonl
from conva_mlx.errors import ConvaError
from conva_mlx.probes.gate import dilemma_split
from conva_mlx.values import check_value

Split = Literal["test", "calibration"]


@dataclass(frozen=True)
class EvalItem:
    value: str
    prompt_id: str
    prompt: str


def prompt_file_values(prompts_file: Path) -> list[str]:
    """The values a --prompts file names, in order of first use."""
    seen: dict[str, None] = {}
    for lineno, r in read_jsonl(Path(prompts_file)):
        if not r.get("value"):
            raise ConvaError(f"{prompts_file}:{lineno}: needs 'value' and 'prompt'")
        seen[check_value(str(r["value"]))] = None
    if not seen:
        raise ConvaError(f"{prompts_file}: no prompts")
    return list(seen)


def _file_items(values: list[str], n: int | None, prompts_file: Path) -> list[EvalItem]:
    items: list[EvalItem] = []
    per: dict[str, int] = {}
    for lineno, r in read_jsonl(Path(prompts_file)):
        if not r.get("value") or not r.get("prompt"):
            raise ConvaError(f"{prompts_file}:{lineno}: needs 'value' and 'prompt'")
        v = check_value(str(r["value"]))
        if v not in values or (n is not None and per.get(v, 0) >= n):
            continue
        per[v] = per.get(v, 0) + 1
        items.append(EvalItem(v, str(r.get("id") or f"line-{lineno}"), str(r["prompt"])))
    if not items:
        raise ConvaError(f"{prompts_file}: no prompts for the chosen values")
    return items


def load_items(values: list[str], n: int | None = None, prompts_file: Path | None = None,
               data: ValueData | None = None, split: Split = "test") -> list[EvalItem]:
    """Held-out prompts per value (at most n each): the test (even) half of the dilemmas,
    or the calibration (odd) half to tune strengths and recipes on."""
    if prompts_file is not None:
        return _file_items(values, n, prompts_file)
    data = data or ValueData()
    items: list[EvalItem] = []
    for v in values:
        ds = data.dilemmas(v)
        calib, test = dilemma_split([d.id for d in ds])
        half = calib if split == "calibration" else test
        chosen = [ds[i] for i in half][: n if n is not None else None]
        items += [EvalItem(v, d.id, d.prompt) for d in chosen]
    return items
