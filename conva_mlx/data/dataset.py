"""The shipped value data and its record types (schema documented in conva_mlx/data/README.md).

Layout of a data directory (the shipped one is `conva_mlx/data/`):
    values.jsonl                  value definitions
    pairs/<value>.jsonl           context-controlled pairs (100 per value, 4 blocks of 25)
    uncontrolled/<value>.jsonl    non-context-controlled pairs (ablation)
    dilemmas/<value>.jsonl        held-out test dilemmas (value-related gate positives)
    choices/<value>.jsonl         each dilemma's two written actions (the choice instrument)
    gate/unrelated_queries.jsonl  value-unrelated queries (gate negatives)
    gate/beyond_dilemmas.jsonl    value-related non-dilemmas and value-neutral choices
    gate/mcq.jsonl                value-unrelated multiple-choice questions
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from conva_mlx.errors import ConvaError
from conva_mlx.values import VALUE_NAMES, check_value

SHIPPED_DATA = Path(__file__).parent  # the shipped JSONL folders sit beside this module
BLOCKS = ("first_person_scenario", "third_person_scenario", "first_person_question",
          "third_person_question")


@dataclass(frozen=True)
class Pair:
    id: str
    value: str
    positive: str
    negative: str
    block: str = ""
    setting: str = ""


@dataclass(frozen=True)
class Dilemma:
    id: str
    value: str
    prompt: str
    competing: str = ""


@dataclass(frozen=True)
class Choice:
    """A dilemma's two written actions: the one its value prefers, the one its competing
    value prefers (the choice instrument scores the model's preference between them)."""

    id: str
    value_action: str
    competing_action: str


@dataclass(frozen=True)
class Query:
    id: str
    prompt: str
    category: str = ""


GATE_KINDS = ("value-opinion", "value-advice", "value-paragraph", "neutral-choice")


@dataclass(frozen=True)
class GateQuery:
    """A gate query beyond dilemma wording: value-related (an opinion, advice or a paragraph
    about something a value is about) or a value-neutral practical choice phrased like a
    dilemma ("Should I use tabs or spaces?")."""

    id: str
    kind: str
    prompt: str
    value: str = ""

    @property
    def related(self) -> bool:
        return self.kind != "neutral-choice"


@dataclass(frozen=True)
class MCQ:
    id: str
    question: str
    options: dict[str, str]
    answer: str
    subject: str = ""

    def as_prompt(self) -> str:
        lines = [self.question, *(f"{k}. {v}" for k, v in sorted(self.options.items()))]
        return "\n".join(lines) + "\nAnswer with the letter of the correct option."


# Records are sentences, prompts and replies: these bounds are far above any real one, and
# keep a wrong file (one huge line, a disk image) from running for minutes.
MAX_LINE_BYTES = 256 << 10
MAX_FILE_BYTES = 64 << 20


def _size_text(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"


def check_file_size(path: Path, limit: int = MAX_FILE_BYTES) -> None:
    size = path.stat().st_size
    if size > limit:
        raise ConvaError(f"{path}: is {_size_text(size)}; JSONL files are read up to "
                         f"{_size_text(limit)} (is this the right file?)")


def bounded_lines(f: BinaryIO, limit: int = MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """The lines of a binary file; None for a line longer than `limit` bytes, which is
    skipped in pieces, never held whole."""
    while line := f.readline(limit + 1):
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        while (rest := f.readline(limit)) and not rest.endswith(b"\n"):
            pass
        yield None


@contextmanager
def jsonl_lines(path: Path) -> Iterator[Iterator[bytes | None]]:
    """A JSONL file's lines for `parse_jsonl`, with the size bounds applied."""
    check_file_size(path)
    with open(path, "rb") as f:
        yield bounded_lines(f)


def parse_jsonl(lines: Iterable[bytes | str | None]
                ) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """For each non-blank line: (line number, record, "") or (line number, None, problem).

    Lines may be bytes (files opened in binary), so that bytes that are not UTF-8 become
    a problem on their line rather than an exception for the whole file; None stands for
    a line over MAX_LINE_BYTES (see `bounded_lines`).
    """
    for lineno, raw in enumerate(lines, 1):
        if raw is None:
            yield lineno, None, (f"line is longer than {_size_text(MAX_LINE_BYTES)}, the "
                                 "limit for one record (is this the right file?)")
            continue
        if isinstance(raw, bytes):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, None, f"not valid UTF-8 (byte {raw[exc.start]:#04x} at " \
                                    f"column {exc.start + 1})"
                continue
        else:
            line = raw
        if not line.strip():
            continue
        try:  # without its line break, so a cut-off line's error has its real column
            record = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            yield lineno, None, f"not valid JSON ({exc.msg} at column {exc.colno})"
            continue
        if not isinstance(record, dict):
            yield lineno, None, "expected a JSON object"
            continue
        yield lineno, record, ""


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record); a malformed line is an error naming file and line."""
    if not path.is_file():
        raise ConvaError(f"{path}: no such data file")
    with jsonl_lines(path) as lines:
        for lineno, record, problem in parse_jsonl(lines):
            if record is None:
                raise ConvaError(f"{path}:{lineno}: {problem}")
            yield lineno, record


def _build(cls: type, path: Path, lineno: int, record: dict[str, Any],
           required: Sequence[str]) -> Any:
    missing = [k for k in required if not record.get(k)]
    if missing:
        raise ConvaError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in record.items() if k in names})


class ValueData:
    """Access to one data directory."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else SHIPPED_DATA
        if not self.root.is_dir():
            raise ConvaError(f"{self.root}: no such data directory")

    def pairs(self, value: str, controlled: bool = True) -> list[Pair]:
        check_value(value)
        sub = "pairs" if controlled else "uncontrolled"
        path = self.root / sub / f"{value}.jsonl"
        return [_build(Pair, path, n, r, ("id", "value", "positive", "negative"))
                for n, r in read_jsonl(path)]

    def dilemmas(self, value: str) -> list[Dilemma]:
        check_value(value)
        path = self.root / "dilemmas" / f"{value}.jsonl"
        return [_build(Dilemma, path, n, r, ("id", "value", "prompt"))
                for n, r in read_jsonl(path)]

    def choices(self, value: str) -> dict[str, Choice]:
        """choices/<value>.jsonl by dilemma id."""
        check_value(value)
        path = self.root / "choices" / f"{value}.jsonl"
        if not path.is_file():
            raise ConvaError(f"{path}: no choice data for {value} (each dilemma's two written "
                             "actions; `conva-mlx data generate --choices` writes them)")
        rows = [_build(Choice, path, n, r, ("id", "value_action", "competing_action"))
                for n, r in read_jsonl(path)]
        return {c.id: c for c in rows}

    def all_dilemmas(self) -> list[Dilemma]:
        return [d for v in VALUE_NAMES for d in self.dilemmas(v)]

    def unrelated_queries(self) -> list[Query]:
        path = self.root / "gate" / "unrelated_queries.jsonl"
        return [_build(Query, path, n, r, ("id", "prompt")) for n, r in read_jsonl(path)]

    def gate_queries(self) -> list[GateQuery]:
        """gate/beyond_dilemmas.jsonl (optional in a custom data directory)."""
        path = self.root / "gate" / "beyond_dilemmas.jsonl"
        if not path.is_file():
            return []
        out = [_build(GateQuery, path, n, r, ("id", "kind", "prompt"))
               for n, r in read_jsonl(path)]
        for q in out:
            if q.kind not in GATE_KINDS:
                raise ConvaError(f"{path}: {q.id} has kind '{q.kind}' (choose from "
                                 f"{', '.join(GATE_KINDS)})")
            if q.related and q.value:
                check_value(q.value)
        return out

    def mcqs(self) -> list[MCQ]:
        path = self.root / "gate" / "mcq.jsonl"
        return [_build(MCQ, path, n, r, ("id", "question", "options", "answer"))
                for n, r in read_jsonl(path)]

    def files(self) -> list[Path]:
        """The files extraction reads (judge/ holds labelled replies for judges and choices/
        the instrument's written actions: neither changes a pack)."""
        return sorted(p for p in self.root.rglob("*.jsonl")
                      if p.relative_to(self.root).parts[0] not in ("judge", "choices"))

    def digest(self) -> str:
        """Hash of every data file, recorded in packs and eval results."""
        h = hashlib.sha256()
        for p in self.files():
            h.update(str(p.relative_to(self.root)).encode())
            h.update(p.read_bytes())
        return h.hexdigest()[:16]
