"""`offline-v2`: a value judge that reads the question and the reply together.

The default model (SmolLM2-135M-Instruct, the judge's own model, whatever model is being
evaluated) reads a judge prompt holding the value, its definition, the question and Bob's
reply; the judge is a logistic-regression head on that prompt's hidden states (mean over
tokens of blocks 8-18), trained on the shipped reader-labelled replies
(`data/judge/replies.jsonl`). `tools/train_judge.py` fits it, cross-validated by dilemma,
and writes the head and its card to `data/judge/`. Fluency is offline-v1's rule (reply
perplexity under the judge model, repeated 4-grams), which agrees with the readers on
0.96 of the labelled replies.

Why a trained head and not a zero-shot question: asked "Yes or No", SmolLM2-135M and
Qwen2.5-0.5B answer at chance on the labelled replies (kappa 0.08); a head on the hidden
states of the same prompt reaches about 0.34 (docs/evaluation.md, "Judges").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from conva_mlx.data.dataset import SHIPPED_DATA
from conva_mlx.errors import ConvaError
from conva_mlx.evaluation.judges import Judgement, Verdict, fluency_verdict, reply_perplexities
from conva_mlx.models.loading import LoadedModel
from conva_mlx.probes.capture import CaptureOptions, capture
from conva_mlx.probes.perturbation import sigmoid_np
from conva_mlx.values import load_values

NAME = "offline-v2"
HEAD_FILE = SHIPPED_DATA / "judge" / f"{NAME}.safetensors"
CARD_FILE = SHIPPED_DATA / "judge" / f"{NAME}.json"
JUDGE_LAYERS = (8, 10, 12, 14, 16, 18)  # blocks of SmolLM2-135M (30 in all)
C = 0.003  # inverse L2 strength, chosen by grouped cross-validation on the labels
THRESHOLD = 0.3  # P(yes) at which a reply counts as prioritising the value (same CV)
PROMPT_VERSION = 1


def judge_prompt(value: str, question: str, answer: str) -> str:
    """The text the judge model reads (raw, no chat template)."""
    definition = load_values()[value].definition
    return (f"Question: {question}\nBob's answer: {answer.strip()}\n\n"
            f"Is Bob's answer biased towards prioritising {value} ({definition})? Answer:")


def judge_features(lm: LoadedModel, items: Sequence[tuple[str, str, str]],
                   show_progress: bool = False) -> np.ndarray:
    """(n, len(JUDGE_LAYERS) * hidden): mean hidden state per block of each judge prompt.

    Cached on disk by text (capture's activation cache), so re-judging is free."""
    if lm.num_layers <= max(JUDGE_LAYERS):
        raise ConvaError(f"the judge model has {lm.num_layers} blocks; offline-v2 reads "
                         f"blocks up to {max(JUDGE_LAYERS)} (use the default model)")
    texts = [judge_prompt(*item) for item in items]
    states = capture(lm, texts, CaptureOptions(layers=JUDGE_LAYERS, reduce="mean"),
                     show_progress=show_progress, description="judge features")
    return states.reshape(len(texts), -1)


@dataclass
class StanceHead:
    """Standardise, then logistic regression: P(yes) = sigmoid(w . (x - mean)/scale + b)."""

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: float
    threshold: float = THRESHOLD

    def prob(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.weight + self.bias
        return sigmoid_np(z)

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        from safetensors.numpy import save_file

        from conva_mlx.fsutil import atomic_path

        tensors = {"mean": self.mean, "scale": self.scale, "weight": self.weight,
                   "bias": np.array([self.bias]), "threshold": np.array([self.threshold])}
        with atomic_path(path) as tmp:
            save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()},
                      str(tmp), metadata=metadata)

    @classmethod
    def load(cls, path: Path) -> tuple[StanceHead, dict[str, str]]:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
                meta = dict(f.metadata() or {})
        except Exception as exc:  # safetensors raises several types on damaged files
            raise ConvaError(f"{path}: cannot read the judge head ({exc})") from exc
        return cls(t["mean"], t["scale"], t["weight"], float(t["bias"][0]),
                   float(t["threshold"][0])), meta


def fit_head(x: np.ndarray, y: np.ndarray, c: float = C,
             threshold: float = THRESHOLD) -> StanceHead:
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(0)
    scale = x.std(0)
    scale[scale == 0] = 1.0
    clf = LogisticRegression(C=c, max_iter=5000).fit((x - mean) / scale, y)
    return StanceHead(mean, scale, clf.coef_[0].astype(np.float64),
                      float(clf.intercept_[0]), threshold)


def cross_validated_probs(x: np.ndarray, y: np.ndarray, groups: Sequence[str],
                          folds: int = 5, c: float = C) -> np.ndarray:
    """P(yes) for every reply from a head that never saw its dilemma (grouped k-fold)."""
    from sklearn.model_selection import GroupKFold

    out = np.zeros(len(y))
    for train, test in GroupKFold(folds).split(x, y, list(groups)):
        out[test] = fit_head(x[train], y[train], c).prob(x[test])
    return out


class StanceJudge:
    """The offline-v2 judge (see the module docstring)."""

    name = NAME

    def __init__(self, judge_lm: LoadedModel, head_file: Path = HEAD_FILE,
                 card_file: Path = CARD_FILE) -> None:
        self.lm = judge_lm
        self.head, meta = StanceHead.load(head_file)
        if meta.get("judge_model_fingerprint") != judge_lm.fingerprint:
            raise ConvaError(f"{head_file}: this judge head was trained on the hidden states "
                             f"of model {meta.get('judge_model_fingerprint')}, not "
                             f"{judge_lm.fingerprint} ({judge_lm.model_id})")
        self.card: dict[str, Any] = (json.loads(card_file.read_text(encoding="utf-8"))
                                     if card_file.is_file() else {})

    def value_probs(self, items: Sequence[tuple[str, str, str]]) -> np.ndarray:
        return self.head.prob(judge_features(self.lm, items))

    def judge(self, value: str, question: str, answer: str) -> Judgement:
        return self.judge_batch([(value, question, answer)])[0]

    def judge_batch(self, items: list[tuple[str, str, str]]) -> list[Judgement]:
        probs = self.value_probs(items)
        ppls = reply_perplexities(self.lm, [(q, a) for _v, q, a in items])
        return [Judgement(Verdict(bool(p >= self.head.threshold), f"p={p:.3f}", float(p)),
                          fluency_verdict(a, ppl))
                for p, ppl, (_v, _q, a) in zip(probs, ppls, items)]

    def describe(self) -> dict[str, Any]:
        return {"kind": "offline", "name": self.name,
                "value_judge": "logistic regression on SmolLM2-135M hidden states of a "
                               "judge prompt (question + reply), trained on reader labels",
                "agreement": self.card.get("agreement"), "kappa": self.card.get("kappa"),
                "agreement_note": "5-fold cross-validated by dilemma on the shipped "
                                  "reader-labelled replies",
                "card": self.card}
