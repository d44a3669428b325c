"""Validate a value-data directory: schema, counts, context control, diversity and leakage.

`validate_data(root)` reads every file of a data directory (layout in `dataset.py`, schema
and thresholds in `conva_mlx/data/README.md`) and returns a `ValidationReport`: errors (the
data must not be used), warnings (worth a look) and per-value, per-block statistics.

Similarity everywhere is difflib's SequenceMatcher ratio on lowercase word tokens
(`[a-z0-9']+`). Comparisons across many sentences (near-duplicates, leakage) are
prefiltered with an exact upper bound on that ratio, 2 * |multiset intersection| /
(len(a) + len(b)), computed for all pairs at once as one sparse matrix product; only the
candidates above the threshold are compared with SequenceMatcher. The whole shipped set
validates in well under a second of similarity work.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

import numpy as np

from conva_mlx.data.choice_rules import CHOICE_FIELDS, action_pair_problems
from conva_mlx.data.dataset import (
    BLOCKS,
    SHIPPED_DATA,
    check_file_size,
    jsonl_lines,
    parse_jsonl,
)
from conva_mlx.errors import ConvaError
from conva_mlx.values import VALUE_NAMES

MIN_CONTEXT_SCORE = 0.5          # each controlled pair: similarity(positive, negative) >= this
LENGTH_RATIO_MIN = 0.6           # words(positive) / words(negative) within [min, max]
LENGTH_RATIO_MAX = 1.6
NEAR_DUP_THRESHOLD = 0.8         # two positives of one value more similar than this: error
MAX_UNCONTROLLED_MEAN = 0.5      # uncontrolled pairs: mean similarity must stay below this
LEAKAGE_THRESHOLD = 0.6          # a dilemma this similar to a training sentence: error
QUERY_DUP_THRESHOLD = 0.8        # a gate query this similar to a dilemma: error
PAIRS_PER_BLOCK = 25
PAIRS_PER_VALUE = PAIRS_PER_BLOCK * len(BLOCKS)
UNCONTROLLED_PER_VALUE = 50
DILEMMAS_PER_VALUE = 60
MIN_QUERIES = 400
MIN_MCQ = 150
MCQ_LETTERS = ("A", "B", "C", "D")

_WORD = re.compile(r"[a-z0-9']+")

MAX_TEXT_CHARS = 2000  # the shipped records are under 200
PAIR_FIELDS = ("id", "value", "block", "setting", "positive", "negative")
UNCONTROLLED_FIELDS = ("id", "value", "positive", "negative")
DILEMMA_FIELDS = ("id", "value", "competing", "prompt")
QUERY_FIELDS = ("id", "category", "prompt")
MCQ_FIELDS = ("id", "subject", "question", "options", "answer")
VALUE_FIELDS = ("name", "position", "group", "definition")


# ---------------------------------------------------------------- per-pair measures

def words(text: str) -> list[str]:
    """Lowercase word tokens, the unit of every similarity and length measure."""
    return _WORD.findall(text.lower())


def token_similarity(a: Sequence[str], b: Sequence[str]) -> float:
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


def similarity(a: str, b: str) -> float:
    """SequenceMatcher ratio between the word tokens of two texts (0..1)."""
    return token_similarity(words(a), words(b))


def context_score(positive: str, negative: str) -> float:
    """How much of the context a pair shares; context-controlled pairs score >= 0.5."""
    return similarity(positive, negative)


def length_ratio(positive: str, negative: str) -> float:
    """Words in the positive over words in the negative."""
    return len(words(positive)) / max(1, len(words(negative)))


def is_question_block(block: str) -> bool:
    return block.endswith("_question")


def pair_problems(positive: str, negative: str, block: str) -> list[str]:
    """Why a context-controlled pair is not acceptable (empty list: it is).

    The per-pair checks shared by `validate_data` and the generator.
    """
    problems = []
    if words(positive) == words(negative):
        problems.append("negative identical to positive")
        return problems
    score = context_score(positive, negative)
    if score < MIN_CONTEXT_SCORE:
        problems.append(f"not context-controlled: similarity {score:.2f} < {MIN_CONTEXT_SCORE}")
    ratio = length_ratio(positive, negative)
    if not LENGTH_RATIO_MIN <= ratio <= LENGTH_RATIO_MAX:
        problems.append(f"length ratio {ratio:.2f} outside {LENGTH_RATIO_MIN}-{LENGTH_RATIO_MAX}")
    if is_question_block(block):
        for name, text in (("positive", positive), ("negative", negative)):
            if not text.rstrip().endswith("?"):
                problems.append(f"{name} in a question block must end with '?'")
    return problems


# ---------------------------------------------------------------- report

@dataclass(frozen=True)
class Issue:
    """One problem, located as `file:line` (relative to the data root) or by ids."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class GroupStats:
    """Statistics for one value and one group (a block, 'uncontrolled' or 'dilemmas')."""

    value: str
    group: str
    count: int
    expected: int
    mean_score: float | None = None
    min_score: float | None = None
    mean_length_ratio: float | None = None
    near_duplicates: int = 0


@dataclass
class ValidationReport:
    root: str
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    stats: list[GroupStats] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, where: str, message: str) -> None:
        self.errors.append(Issue(where, message))

    def warn(self, where: str, message: str) -> None:
        self.warnings.append(Issue(where, message))

    def summary(self) -> str:
        status = "ok" if self.ok else "FAILED"
        return (f"{self.root}: {status}: {len(self.errors)} error(s), "
                f"{len(self.warnings)} warning(s) ({self.seconds:.2f} s)")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


# ---------------------------------------------------------------- reading

@dataclass(frozen=True)
class _Record:
    file: str
    line: int
    data: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def text(self, key: str) -> str:
        return str(self.data[key])


def _read(root: Path, rel: str, report: ValidationReport) -> list[_Record] | None:
    """All JSON-object lines of a file; malformed lines are errors, not exceptions."""
    path = root / rel
    if not path.is_file():
        report.error(rel, "missing file")
        return None
    records = []
    try:
        check_file_size(path)
    except ConvaError as exc:
        report.error(rel, str(exc).removeprefix(f"{path}: "))
        return None
    with jsonl_lines(path) as lines:
        for lineno, data, problem in parse_jsonl(lines):
            if data is None:
                report.error(f"{rel}:{lineno}", problem)
                continue
            records.append(_Record(rel, lineno, data))
    return records


def _has_fields(rec: _Record, fields: Sequence[str], report: ValidationReport,
                text_fields: Sequence[str]) -> bool:
    missing = [k for k in fields if rec.data.get(k) in (None, "", {}, [])]
    if missing:
        report.error(rec.where, f"missing field(s) {', '.join(missing)}")
        return False
    wrong = [k for k in text_fields if not isinstance(rec.data[k], str)]
    if wrong:
        report.error(rec.where, f"field(s) {', '.join(wrong)} must be strings")
        return False
    long = [k for k in text_fields if len(rec.data[k]) > MAX_TEXT_CHARS]
    if long:  # the similarity measures are quadratic in the words of a text
        report.error(rec.where, f"field(s) {', '.join(long)} longer than {MAX_TEXT_CHARS} "
                                "characters (records are sentences and short prompts)")
        return False
    extra = sorted(set(rec.data) - set(fields))
    if extra:
        report.warn(rec.where, f"unknown field(s) {', '.join(extra)}")
    return True


def _check_value_field(rec: _Record, expected: str, report: ValidationReport) -> bool:
    value = rec.data["value"]
    if value not in VALUE_NAMES:
        report.error(rec.where, f"unknown value '{value}'")
        return False
    if value != expected:
        report.error(rec.where, f"value '{value}' does not match the file name ('{expected}')")
        return False
    return True


def _id_number(rec: _Record, pattern: str, report: ValidationReport,
               seen: dict[str, str]) -> int | None:
    """The number in a record's id; reports malformed and duplicate ids."""
    rid = str(rec.data["id"])
    if rid in seen:
        report.error(rec.where, f"duplicate id '{rid}' (first at {seen[rid]})")
    else:
        seen[rid] = rec.where
    m = re.fullmatch(pattern, rid)
    if not m:
        report.error(rec.where, f"id '{rid}' does not match '{pattern}'")
        return None
    return int(m.group(1))


def _value_files(root: Path, sub: str, report: ValidationReport) -> list[str]:
    """The value names whose file exists in `sub`; missing and unknown files are errors."""
    folder = root / sub
    if not folder.is_dir():
        report.error(sub, "missing directory")
        return []
    present = {p.stem for p in folder.glob("*.jsonl")}
    for stem in sorted(present - set(VALUE_NAMES)):
        report.error(f"{sub}/{stem}.jsonl", f"unknown value '{stem}' (file name)")
    for value in VALUE_NAMES:
        if value not in present:
            report.error(f"{sub}/{value}.jsonl", "missing file")
    return [v for v in VALUE_NAMES if v in present]


# ---------------------------------------------------------------- similarity search

def _occurrences(tokens: Sequence[str]) -> list[str]:
    """Token occurrences ('the#0', 'the#1', ...): set overlap of these = multiset overlap."""
    seen: Counter[str] = Counter()
    out = []
    for t in tokens:
        out.append(f"{t}#{seen[t]}")
        seen[t] += 1
    return out


def _candidates(a: Sequence[Sequence[str]], b: Sequence[Sequence[str]],
                threshold: float) -> Iterator[tuple[int, int]]:
    """Index pairs (i, j) whose similarity upper bound exceeds `threshold`.

    SequenceMatcher's ratio is 2M / (len(a) + len(b)) with M matched tokens, and M is at most
    the multiset intersection, so no pair above the threshold is missed.
    """
    if not a or not b:
        return
    from scipy import sparse

    vocab: dict[str, int] = {}

    def matrix(seqs: Sequence[Sequence[str]]) -> Any:
        rows, cols = [], []
        for i, toks in enumerate(seqs):
            for occ in _occurrences(toks):
                rows.append(i)
                cols.append(vocab.setdefault(occ, len(vocab)))
        return rows, cols

    ra, ca = matrix(a)
    rb, cb = matrix(b)
    shape_a, shape_b = (len(a), len(vocab)), (len(b), len(vocab))
    ma = sparse.csr_matrix((np.ones(len(ra), np.float32), (ra, ca)), shape=shape_a)
    mb = sparse.csr_matrix((np.ones(len(rb), np.float32), (rb, cb)), shape=shape_b)
    inter = (ma @ mb.T).tocoo()
    la = np.array([len(s) for s in a], np.float32)
    lb = np.array([len(s) for s in b], np.float32)
    bound = 2.0 * inter.data / np.maximum(la[inter.row] + lb[inter.col], 1.0)
    keep = bound > threshold
    yield from zip(inter.row[keep].tolist(), inter.col[keep].tolist())


def _similar_pairs(a: Sequence[Sequence[str]], b: Sequence[Sequence[str]],
                   threshold: float) -> Iterator[tuple[int, int, float]]:
    """(i, j, similarity) for every pair above `threshold`."""
    for i, j in _candidates(a, b, threshold):
        score = token_similarity(a[i], b[j])
        if score > threshold:
            yield i, j, score


# ---------------------------------------------------------------- the checks

def _check_values(root: Path, report: ValidationReport) -> None:
    records = _read(root, "values.jsonl", report)
    if records is None:
        return
    seen: set[str] = set()
    for rec in records:
        if not _has_fields(rec, VALUE_FIELDS, report, ("name", "group", "definition")):
            continue
        name = rec.data["name"]
        if name not in VALUE_NAMES:
            report.error(rec.where, f"unknown value '{name}'")
            continue
        if name in seen:
            report.error(rec.where, f"duplicate value '{name}'")
        seen.add(name)
        if rec.data["position"] != VALUE_NAMES.index(name):
            report.error(rec.where, f"position {rec.data['position']} of '{name}' is not its "
                                    f"circumplex position {VALUE_NAMES.index(name)}")
    for name in VALUE_NAMES:
        if name not in seen:
            report.error("values.jsonl", f"value '{name}' is missing")
    report.totals["values"] = len(seen)


def _check_pairs(root: Path, report: ValidationReport) -> dict[str, list[_Record]]:
    """Schema and per-pair checks of pairs/; returns the usable records per value."""
    usable: dict[str, list[_Record]] = {}
    first_seen: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}
    for value in _value_files(root, "pairs", report):
        records = _read(root, f"pairs/{value}.jsonl", report) or []
        ids: dict[str, str] = {}
        last_number = 0
        good = []
        for rec in records:
            if not _has_fields(rec, PAIR_FIELDS, report, PAIR_FIELDS[1:]):
                continue
            if not _check_value_field(rec, value, report):
                continue
            number = _id_number(rec, rf"{re.escape(value)}-(\d{{3}})", report, ids)
            block = rec.data["block"]
            if block not in BLOCKS:
                report.error(rec.where, f"unknown block '{block}' (blocks: {', '.join(BLOCKS)})")
                continue
            if number is not None:
                if number <= last_number:
                    report.error(rec.where, f"id '{rec.data['id']}' out of order "
                                            f"(after number {last_number:03d})")
                last_number = max(last_number, number)
                index = (number - 1) // PAIRS_PER_BLOCK
                if not 0 <= index < len(BLOCKS):
                    report.error(rec.where, f"id number {number} outside 1-{PAIRS_PER_VALUE}")
                elif BLOCKS[index] != block:
                    report.error(rec.where, f"block '{block}' out of order: ids "
                                            f"{index * 25 + 1:03d}-{index * 25 + 25:03d} are "
                                            f"'{BLOCKS[index]}'")
            pos, neg = rec.text("positive"), rec.text("negative")
            key = (tuple(words(pos)), tuple(words(neg)))
            if key in first_seen:
                report.error(rec.where, f"duplicate pair (same as {first_seen[key]})")
                continue
            first_seen[key] = rec.where
            for problem in pair_problems(pos, neg, block):
                report.error(rec.where, problem)
            good.append(rec)
        usable[value] = good
    return usable


def _pair_stats(value: str, group: str, records: Sequence[_Record], expected: int,
                near_dups: int = 0) -> GroupStats:
    scores = [context_score(r.text("positive"), r.text("negative")) for r in records]
    ratios = [length_ratio(r.text("positive"), r.text("negative")) for r in records]
    return GroupStats(
        value=value, group=group, count=len(records), expected=expected,
        mean_score=round(float(np.mean(scores)), 3) if scores else None,
        min_score=round(min(scores), 3) if scores else None,
        mean_length_ratio=round(float(np.mean(ratios)), 3) if ratios else None,
        near_duplicates=near_dups,
    )


def _check_near_duplicates(value: str, records: Sequence[_Record],
                           report: ValidationReport) -> Counter[str]:
    """Positives of different pairs of one value that nearly repeat each other."""
    toks = [words(r.text("positive")) for r in records]
    per_block: Counter[str] = Counter()
    for i, j, score in sorted(_similar_pairs(toks, toks, NEAR_DUP_THRESHOLD)):
        if i >= j:
            continue
        a, b = records[i], records[j]
        per_block[str(b.data["block"])] += 1
        report.error(b.where, f"positive nearly duplicates {a.where} ({a.data['id']} / "
                              f"{b.data['id']}, similarity {score:.2f} > {NEAR_DUP_THRESHOLD})")
    return per_block


def _check_pair_counts(value: str, records: Sequence[_Record], report: ValidationReport) -> None:
    by_block = Counter(str(r.data["block"]) for r in records)
    for block in BLOCKS:
        if by_block[block] != PAIRS_PER_BLOCK:
            report.error(f"pairs/{value}.jsonl", f"block '{block}' has {by_block[block]} "
                                                 f"usable pairs, expected {PAIRS_PER_BLOCK}")


def _check_uncontrolled(root: Path, report: ValidationReport) -> None:
    for value in _value_files(root, "uncontrolled", report):
        rel = f"uncontrolled/{value}.jsonl"
        records = _read(root, rel, report) or []
        ids: dict[str, str] = {}
        seen: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}
        good = []
        for rec in records:
            if not _has_fields(rec, UNCONTROLLED_FIELDS, report, UNCONTROLLED_FIELDS[1:]):
                continue
            if not _check_value_field(rec, value, report):
                continue
            _id_number(rec, rf"{re.escape(value)}-nc-(\d{{3}})", report, ids)
            pos, neg = rec.text("positive"), rec.text("negative")
            key = (tuple(words(pos)), tuple(words(neg)))
            if key in seen:
                report.error(rec.where, f"duplicate pair (same as {seen[key]})")
                continue
            seen[key] = rec.where
            if key[0] == key[1]:
                report.error(rec.where, "negative identical to positive")
                continue
            good.append(rec)
        stats = _pair_stats(value, "uncontrolled", good, UNCONTROLLED_PER_VALUE)
        report.stats.append(stats)
        if len(good) != UNCONTROLLED_PER_VALUE:
            report.error(rel, f"{len(good)} usable pairs, expected {UNCONTROLLED_PER_VALUE}")
        if stats.mean_score is not None and stats.mean_score >= MAX_UNCONTROLLED_MEAN:
            report.error(rel, f"uncontrolled pairs look context-controlled: mean similarity "
                              f"{stats.mean_score:.2f} >= {MAX_UNCONTROLLED_MEAN}")


def _check_dilemmas(root: Path, report: ValidationReport) -> list[_Record]:
    out = []
    seen: dict[tuple[str, ...], str] = {}
    for value in _value_files(root, "dilemmas", report):
        rel = f"dilemmas/{value}.jsonl"
        records = _read(root, rel, report) or []
        ids: dict[str, str] = {}
        count = 0
        for rec in records:
            if not _has_fields(rec, DILEMMA_FIELDS, report, DILEMMA_FIELDS[1:]):
                continue
            if not _check_value_field(rec, value, report):
                continue
            _id_number(rec, rf"{re.escape(value)}-d-(\d{{3}})", report, ids)
            competing = rec.data["competing"]
            if competing not in VALUE_NAMES:
                report.error(rec.where, f"unknown competing value '{competing}'")
            elif competing == value:
                report.error(rec.where, "competing value must differ from the value")
            key = tuple(words(rec.text("prompt")))
            if key in seen:
                report.error(rec.where, f"duplicate dilemma (same as {seen[key]})")
                continue
            seen[key] = rec.where
            out.append(rec)
            count += 1
        report.stats.append(GroupStats(value, "dilemmas", count, DILEMMAS_PER_VALUE))
        if count != DILEMMAS_PER_VALUE:
            report.error(rel, f"{count} usable dilemmas, expected {DILEMMAS_PER_VALUE}")
    report.totals["dilemmas"] = len(out)
    return out


def _check_choices(root: Path, dilemmas: Sequence[_Record], report: ValidationReport) -> None:
    """choices/<value>.jsonl: one row per dilemma (by id), each pair of actions within the
    rules of `choice_rules`, no action repeated. An older data directory without choices/
    only gets a warning (the choice instrument needs it; extraction does not)."""
    if not (root / "choices").is_dir():
        report.warn("choices", "missing directory: `conva-mlx choices` cannot score this data "
                               "(`data generate --choices` writes it)")
        return
    by_value: dict[str, dict[str, _Record]] = defaultdict(dict)
    for d in dilemmas:
        by_value[str(d.data["value"])][str(d.data["id"])] = d
    total = 0
    for value in _value_files(root, "choices", report):
        rel = f"choices/{value}.jsonl"
        expected = by_value.get(value, {})
        covered: dict[str, str] = {}
        actions: dict[tuple[str, ...], str] = {}
        for rec in _read(root, rel, report) or []:
            if not _has_fields(rec, CHOICE_FIELDS, report, CHOICE_FIELDS):
                continue
            rid = rec.text("id")
            if rid in covered:
                report.error(rec.where, f"duplicate id '{rid}' (first at {covered[rid]})")
                continue
            if rid not in expected:
                report.error(rec.where, f"id '{rid}' is not a dilemma of {value}")
                continue
            covered[rid] = rec.where
            for problem in action_pair_problems(rec.text("value_action"),
                                                rec.text("competing_action")):
                report.error(rec.where, f"{rid}: {problem}")
            for name in ("value_action", "competing_action"):
                key = tuple(words(rec.text(name)))
                if key in actions:
                    report.error(rec.where, f"{rid}: {name} repeats an action at "
                                            f"{actions[key]}")
                else:
                    actions[key] = rec.where
            total += 1
        missing = [i for i in expected if i not in covered]
        if missing:
            report.error(rel, f"no actions for {len(missing)} dilemma(s): "
                              + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    report.totals["choices"] = total


def _check_leakage(dilemmas: Sequence[_Record], pairs: dict[str, list[_Record]],
                   report: ValidationReport) -> None:
    """A held-out dilemma must not repeat a training sentence (positives and negatives)."""
    sentences = [(r, k) for recs in pairs.values() for r in recs for k in ("positive", "negative")]
    train = [words(r.text(k)) for r, k in sentences]
    tests = [words(d.text("prompt")) for d in dilemmas]
    worst: dict[int, tuple[float, int]] = {}
    for i, j, score in _similar_pairs(tests, train, LEAKAGE_THRESHOLD):
        if i not in worst or score > worst[i][0]:
            worst[i] = (score, j)
    for i, (score, j) in sorted(worst.items()):
        rec, key = sentences[j]
        report.error(dilemmas[i].where, f"test dilemma leaks training data: similarity "
                                        f"{score:.2f} > {LEAKAGE_THRESHOLD} to the {key} of "
                                        f"{rec.where} ({rec.data['id']})")


def _check_queries(root: Path, dilemmas: Sequence[_Record], report: ValidationReport) -> None:
    rel = "gate/unrelated_queries.jsonl"
    records = _read(root, rel, report)
    if records is None:
        return
    ids: dict[str, str] = {}
    seen: dict[tuple[str, ...], str] = {}
    good = []
    for rec in records:
        if not _has_fields(rec, QUERY_FIELDS, report, QUERY_FIELDS):
            continue
        _id_number(rec, r"q-(\d{3,})", report, ids)
        key = tuple(words(rec.text("prompt")))
        if key in seen:
            report.error(rec.where, f"duplicate query (same as {seen[key]})")
            continue
        seen[key] = rec.where
        good.append(rec)
    report.totals["unrelated_queries"] = len(good)
    if len(good) < MIN_QUERIES:
        report.error(rel, f"{len(good)} usable queries, expected at least {MIN_QUERIES}")
    toks = [words(r.text("prompt")) for r in good]
    dtoks = [words(d.text("prompt")) for d in dilemmas]
    for i, j, score in sorted(_similar_pairs(toks, dtoks, QUERY_DUP_THRESHOLD)):
        report.error(good[i].where, f"gate query duplicates dilemma {dilemmas[j].where} "
                                    f"(similarity {score:.2f} > {QUERY_DUP_THRESHOLD})")


def _check_mcq(root: Path, report: ValidationReport) -> None:
    rel = "gate/mcq.jsonl"
    records = _read(root, rel, report)
    if records is None:
        return
    ids: dict[str, str] = {}
    seen: dict[tuple[str, ...], str] = {}
    count = 0
    for rec in records:
        if not _has_fields(rec, MCQ_FIELDS, report, ("id", "subject", "question", "answer")):
            continue
        _id_number(rec, r"mcq-(\d{3,})", report, ids)
        options = rec.data["options"]
        if not isinstance(options, dict):
            report.error(rec.where, "options must be an object {\"A\": ..., ..., \"D\": ...}")
            continue
        if sorted(options) != list(MCQ_LETTERS):
            report.error(rec.where, f"needs exactly 4 options A-D, got "
                                    f"{', '.join(sorted(options)) or 'none'}")
            continue
        if not all(isinstance(t, str) and t.strip() for t in options.values()):
            report.error(rec.where, "every option must be a non-empty string")
            continue
        if rec.data["answer"] not in options:
            report.error(rec.where, f"answer '{rec.data['answer']}' is not one of the options "
                                    f"A-D")
            continue
        if len({str(t).strip().lower() for t in options.values()}) < len(options):
            report.warn(rec.where, "two options have the same text")
        key = tuple(words(rec.text("question")) + words(json.dumps(options, sort_keys=True)))
        if key in seen:
            report.error(rec.where, f"duplicate question (same as {seen[key]})")
            continue
        seen[key] = rec.where
        count += 1
    report.totals["mcq"] = count
    if count < MIN_MCQ:
        report.error(rel, f"{count} usable questions, expected at least {MIN_MCQ}")


def validate_data(root: Path | str | None = None) -> ValidationReport:
    """Check every file of a data directory (default: the shipped one)."""
    start = time.perf_counter()
    root = Path(root) if root is not None else SHIPPED_DATA
    report = ValidationReport(root=str(root))
    if not root.is_dir():
        report.error(str(root), "no such data directory")
        return report
    _check_values(root, report)
    pairs = _check_pairs(root, report)
    for value, records in pairs.items():
        _check_pair_counts(value, records, report)
        near = _check_near_duplicates(value, records, report)
        by_block: dict[str, list[_Record]] = defaultdict(list)
        for rec in records:
            by_block[str(rec.data["block"])].append(rec)
        for block in BLOCKS:
            report.stats.append(_pair_stats(value, block, by_block[block], PAIRS_PER_BLOCK,
                                            near[block]))
    report.totals["pairs"] = sum(len(r) for r in pairs.values())
    _check_uncontrolled(root, report)
    dilemmas = _check_dilemmas(root, report)
    _check_choices(root, dilemmas, report)
    _check_leakage(dilemmas, pairs, report)
    _check_queries(root, dilemmas, report)
    _check_mcq(root, report)
    report.seconds = round(time.perf_counter() - start, 3)
    return report
