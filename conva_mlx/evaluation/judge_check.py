"""How far a judge agrees with careful readers on labelled replies: the judge card.

Labels are JSONL records `{value, question, reply, value_yes, fluent[, method, prompt_id]}`
(the shipped set: conva_mlx/data/judge/replies.jsonl). The card reports Cohen's kappa, not
only raw agreement, because "always no" already agrees on ~80% of value labels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conva_mlx.data.dataset import SHIPPED_DATA, read_jsonl
from conva_mlx.errors import ConvaError
from conva_mlx.values import check_value

SHIPPED_LABELS = SHIPPED_DATA / "judge" / "replies.jsonl"


@dataclass(frozen=True)
class LabelledReply:
    value: str
    question: str
    reply: str
    value_yes: bool
    fluent: bool
    method: str = "unknown"
    prompt_id: str = ""


def load_labels(path: str | Path = SHIPPED_LABELS) -> list[LabelledReply]:
    """Labelled replies, or one clear error naming the file and line."""
    path = Path(path)
    out = []
    for lineno, r in read_jsonl(path):
        where = f"{path}:{lineno}"
        for key in ("value", "question", "reply"):
            if not isinstance(r.get(key), str):
                raise ConvaError(f"{where}: '{key}' must be a string")
        for key in ("value_yes", "fluent"):
            if not isinstance(r.get(key), bool):
                raise ConvaError(f"{where}: '{key}' must be true or false")
        try:
            check_value(r["value"])
        except ConvaError as exc:
            raise ConvaError(f"{where}: {exc}") from exc
        out.append(LabelledReply(r["value"], r["question"], r["reply"], r["value_yes"],
                                 r["fluent"], str(r.get("method") or "unknown"),
                                 str(r.get("prompt_id") or f"line-{lineno}")))
    if not out:
        raise ConvaError(f"{path}: no labelled replies")
    return out


def labels_digest(labels: Sequence[LabelledReply]) -> str:
    h = hashlib.sha256()
    for r in labels:
        h.update(repr(asdict(r)).encode())
    return h.hexdigest()[:16]


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Cohen's kappa of two binary raters (1.0 when both agree on a single class)."""
    n = len(a)
    if n == 0:
        raise ValueError("no ratings")
    observed = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    expected = pa * pb + (1 - pa) * (1 - pb)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


@dataclass
class JudgeCard:
    """A judge's agreement with the readers; goes into every eval results file."""

    judge: str
    labels: str  # file name and digest of the labels it was measured on
    n: int
    kappa: float
    agreement: float
    fluency_agreement: float
    fluency_kappa: float
    confusion: dict[str, int]  # judge yes/no x readers yes/no
    per_method: dict[str, dict[str, float | int]] = field(default_factory=dict)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"judge {self.judge}: kappa {self.kappa:.2f} (agreement {self.agreement:.2f}) "
                f"on {self.n} reader-labelled replies; fluency agreement "
                f"{self.fluency_agreement:.2f}")


def judge_card(name: str, labels: Sequence[LabelledReply], value_yes: Sequence[bool | None],
               fluent: Sequence[bool | None], labels_name: str, note: str = "") -> JudgeCard:
    """The card from a judge's verdicts on `labels` (an unparseable verdict counts as No /
    not fluent, as the eval's CSR does)."""
    vy = [bool(x) for x in value_yes]
    fl = [bool(x) for x in fluent]
    ly = [r.value_yes for r in labels]
    lf = [r.fluent for r in labels]
    n = len(labels)
    per_method: dict[str, dict[str, float | int]] = {}
    for m in sorted({r.method for r in labels}):
        idx = [i for i, r in enumerate(labels) if r.method == m]
        per_method[m] = {
            "n": len(idx),
            "judge_csr": round(sum(vy[i] for i in idx) / len(idx), 4),
            "label_csr": round(sum(ly[i] for i in idx) / len(idx), 4),
            "judge_fr": round(sum(fl[i] for i in idx) / len(idx), 4),
            "label_fr": round(sum(lf[i] for i in idx) / len(idx), 4),
        }
    confusion = {"judge_yes_label_yes": sum(a and b for a, b in zip(vy, ly)),
                 "judge_yes_label_no": sum(a and not b for a, b in zip(vy, ly)),
                 "judge_no_label_yes": sum(b and not a for a, b in zip(vy, ly)),
                 "judge_no_label_no": sum(not a and not b for a, b in zip(vy, ly))}
    return JudgeCard(
        judge=name, labels=f"{labels_name} ({labels_digest(labels)})", n=n,
        kappa=round(cohen_kappa(vy, ly), 4),
        agreement=round(sum(a == b for a, b in zip(vy, ly)) / n, 4),
        fluency_agreement=round(sum(a == b for a, b in zip(fl, lf)) / n, 4),
        fluency_kappa=round(cohen_kappa(fl, lf), 4),
        confusion=confusion, per_method=per_method, note=note)


Verdicts = tuple[list[bool | None], list[bool | None], str]  # value, fluent, note


def check_judge(name: str, labels: Sequence[LabelledReply],
                verdicts: Callable[[Sequence[LabelledReply]], Verdicts],
                labels_name: str = "labels") -> JudgeCard:
    """Run a judge's verdict function over the labels and score it."""
    value_yes, fluent, note = verdicts(labels)
    if len(value_yes) != len(labels) or len(fluent) != len(labels):
        raise AssertionError("a judge returned the wrong number of verdicts")
    return judge_card(name, labels, value_yes, fluent, labels_name, note)
