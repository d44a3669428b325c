"""General ability: value-unrelated multiple-choice questions answered by the next token's
letter, unsteered or steered. One scorer for `eval` and `audit` (resumable through a store)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from conva_mlx.data.dataset import MCQ
from conva_mlx.errors import ConvaError
from conva_mlx.evaluation.batching import batches_by_key
from conva_mlx.evaluation.store import JsonlStore
from conva_mlx.progress import progress_bar
from conva_mlx.steering import SteerConfig, SteeringSession

ANSWER_CUE = "Answer:"


def mcq_letter_ids(tokenizer: Any) -> dict[str, list[int]]:
    """Single-token ids for ' A' and 'A' (etc.), whichever exist."""
    out: dict[str, list[int]] = {}
    for letter in "ABCD":
        ids = []
        for form in (f" {letter}", letter):
            enc = tokenizer.encode(form, add_special_tokens=False)
            if len(enc) == 1:
                ids.append(int(enc[0]))
        if not ids:
            raise ConvaError(f"the tokenizer has no single token for option {letter}")
        out[letter] = ids
    return out


def mcq_answer(logits: mx.array, letter_ids: dict[str, list[int]]) -> str:
    lg = np.array(logits.astype(mx.float32))
    scores = {k: max(float(lg[i]) for i in ids) for k, ids in letter_ids.items()}
    return max(scores, key=lambda k: scores[k])


@dataclass(frozen=True)
class McqScore:
    """Accuracy of one setting over the questions, and how often its gate opened."""
    accuracy: float | None
    n: int
    gate_open_rate: float | None  # None when the setting has no gate

    def to_json(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "n": self.n, "gate_open_rate": self.gate_open_rate}


def mcq_key(setting: str, mcq_id: str, value: str) -> str:
    return json.dumps(["mcq", setting, mcq_id, value])


def score_mcqs(session: SteeringSession, mcqs: list[MCQ],
               settings: Mapping[str, Callable[[str], SteerConfig]], values: list[str],
               store: JsonlStore, batch_size: int = 16, show_progress: bool = True
               ) -> dict[str, McqScore]:
    """Answer every question under every setting (name -> value -> config); the steered value
    rotates over `values` question by question, so each value is pushed on some questions.
    Answers already in the store are reused; a batch shares its setting and value."""
    if not values:
        raise ConvaError("general ability needs at least one value to steer")
    letters = mcq_letter_ids(session.lm.tokenizer)
    value_of = {q.id: values[i % len(values)] for i, q in enumerate(mcqs)}
    todo = [((name, value_of[q.id]), q) for name in settings for q in mcqs
            if mcq_key(name, q.id, value_of[q.id]) not in store]
    with progress_bar(len(todo), "general ability", show_progress) as advance:
        for (name, value), chunk in batches_by_key(todo, batch_size):
            scored = session.next_token_logits_batch(
                [q.as_prompt() for q in chunk], settings[name](value), ANSWER_CUE)
            for q, (logits, gate) in zip(chunk, scored):
                pred = mcq_answer(logits, letters)
                store.append({"key": mcq_key(name, q.id, value), "method": name,
                              "mcq": q.id, "value": value, "pred": pred,
                              "answer": q.answer, "correct": pred == q.answer,
                              "gate_open": gate.open if gate.used else None})
            advance(len(chunk))
    out: dict[str, McqScore] = {}
    for name in settings:
        recs = [store.records[mcq_key(name, q.id, value_of[q.id])] for q in mcqs]
        opened = [r["gate_open"] for r in recs if r["gate_open"] is not None]
        out[name] = McqScore(
            accuracy=round(float(np.mean([r["correct"] for r in recs])), 4) if recs else None,
            n=len(recs), gate_open_rate=round(float(np.mean(opened)), 4) if opened else None)
    return out
