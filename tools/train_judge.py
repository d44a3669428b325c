"""Fit the offline-v2 value judge on the shipped reader labels and write its card.

    .venv/bin/python tools/train_judge.py

Features: conva_mlx.evaluation.stance_judge.judge_features on the default model (cached after the
first run, ~5 min on 2 CPU cores). Writes conva_mlx/data/judge/offline-v2.safetensors (the
head: scaler and logistic regression, float64) and offline-v2.json (the judge card: kappa,
agreement, per-method CSR, all cross-validated by dilemma).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from conva_mlx.evaluation.judge_check import SHIPPED_LABELS, judge_card, labels_digest, load_labels
from conva_mlx.evaluation.judges import fluency_verdict, reply_perplexities
from conva_mlx.evaluation.stance_judge import (
    CARD_FILE,
    HEAD_FILE,
    JUDGE_LAYERS,
    NAME,
    PROMPT_VERSION,
    THRESHOLD,
    C,
    cross_validated_probs,
    fit_head,
    judge_features,
)
from conva_mlx.fsutil import atomic_write_json
from conva_mlx.models.loading import load_model


def main() -> int:
    labels = load_labels(SHIPPED_LABELS)
    lm = load_model("default", "float32")
    x = judge_features(lm, [(r.value, r.question, r.reply) for r in labels], show_progress=True)
    y = np.array([r.value_yes for r in labels], dtype=int)
    probs = cross_validated_probs(x, y, [r.prompt_id for r in labels])
    ppls = reply_perplexities(lm, [(r.question, r.reply) for r in labels], show_progress=True)
    card = judge_card(NAME, labels, [bool(p >= THRESHOLD) for p in probs],
                      [fluency_verdict(r.reply, p).label for r, p in zip(labels, ppls)],
                      SHIPPED_LABELS.name,
                      "value verdicts 5-fold cross-validated by dilemma (prompt_id); C and "
                      "threshold were chosen on the same folds")
    head = fit_head(x, y)
    head.save(HEAD_FILE, {"judge": NAME, "judge_model_fingerprint": lm.fingerprint,
                          "labels_digest": labels_digest(labels)})
    atomic_write_json(CARD_FILE, {**card.as_dict(), "labels_digest": labels_digest(labels),
                                  "judge_model": lm.model_id,
                                  "judge_model_fingerprint": lm.fingerprint,
                                  "layers": list(JUDGE_LAYERS), "reduce": "mean", "C": C,
                                  "threshold": THRESHOLD, "prompt_version": PROMPT_VERSION})
    print(json.dumps({k: v for k, v in card.as_dict().items() if k != "confusion"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
