"""Judges by name, and the judge card of any judge on labelled replies."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from conva_mlx.evaluation.judge_check import (
    JudgeCard,
    LabelledReply,
    Verdicts,
    check_judge,
    labels_digest,
)
from conva_mlx.evaluation.judges import (
    Judge,
    OfflineJudge,
    OpenAIJudge,
    fluency_verdict,
    reply_perplexities,
)
from conva_mlx.evaluation.stance_judge import NAME as STANCE_NAME
from conva_mlx.evaluation.stance_judge import StanceJudge, cross_validated_probs, judge_features
from conva_mlx.models.loading import LoadedModel, load_model
from conva_mlx.values import VALUE_NAMES

JUDGE_NAMES: tuple[str, ...] = (STANCE_NAME, "offline-v1", "openai")
DEFAULT_JUDGE = STANCE_NAME


def make_judge(name: str, *, lm: LoadedModel | None = None, base_url: str | None = None,
               model: str = "gpt-4o-mini", api_key_env: str = "OPENAI_API_KEY",
               values: Sequence[str] = VALUE_NAMES) -> Judge:
    """A judge by name. Offline judges read with the default model unless `lm` is given
    (offline-v2's head is tied to the default model's hidden states)."""
    if name == "openai":
        return OpenAIJudge(model, base_url, api_key_env)
    judge_lm = lm if lm is not None else load_model("default", "float32")
    if name == "offline-v1":
        return OfflineJudge(judge_lm, list(values))
    if name == STANCE_NAME:
        return StanceJudge(judge_lm)
    raise ValueError(f"unknown judge {name}")


def _verdicts_of(judge: Judge, batch: int = 16
                 ) -> Callable[[Sequence[LabelledReply]], Verdicts]:
    def run(labels: Sequence[LabelledReply]) -> Verdicts:
        value: list[bool | None] = []
        fluent: list[bool | None] = []
        items = [(r.value, r.question, r.reply) for r in labels]
        for start in range(0, len(items), batch):
            for j in judge.judge_batch(items[start:start + batch]):
                value.append(j.value.label)
                fluent.append(j.fluency.label)
        return value, fluent, ""
    return run


def _stance_cross_validated(judge: StanceJudge, labels: Sequence[LabelledReply]) -> Verdicts:
    """offline-v2 on its own training labels: each reply judged by a head fitted without
    that reply's dilemma (so the card is not an in-sample score)."""
    x = judge_features(judge.lm, [(r.value, r.question, r.reply) for r in labels],
                       show_progress=True)
    y = np.array([r.value_yes for r in labels], dtype=int)
    probs = cross_validated_probs(x, y, [r.prompt_id for r in labels])
    fluent = _fluency_labels(judge, labels)
    value: list[bool | None] = [bool(p >= judge.head.threshold) for p in probs]
    return value, fluent, ("offline-v2 was trained on these labels: value verdicts are "
                           "5-fold cross-validated by dilemma")


def _fluency_labels(judge: StanceJudge, labels: Sequence[LabelledReply]) -> list[bool | None]:
    ppls = reply_perplexities(judge.lm, [(r.question, r.reply) for r in labels],
                              show_progress=True)
    return [fluency_verdict(r.reply, p).label for r, p in zip(labels, ppls)]


def judge_card_for(judge: Judge, labels: Sequence[LabelledReply],
                   labels_name: str) -> JudgeCard:
    if isinstance(judge, StanceJudge) and judge.card.get("labels_digest") == \
            labels_digest(labels):
        return check_judge(judge.name, labels, lambda ls: _stance_cross_validated(judge, ls),
                           labels_name)
    return check_judge(judge.name, labels, _verdicts_of(judge), labels_name)
