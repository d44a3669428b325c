"""The one sampler every decode loop uses (`generate`, `stream`, `generate_batch`, the server's
batcher): a repetition penalty over each row's recent tokens, then greedy decoding
(temperature 0) or temperature / top-p sampling with the row's own random key, so a seeded
row draws the same tokens whatever else shares its batch."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from mlx_lm.sample_utils import apply_top_p

from conva_mlx.steering.config import GenOptions

REPETITION_WINDOW = 64  # generated tokens the repetition penalty looks back over


class RowSampler:
    """One row's decoding state: its settings, recent tokens and random key."""

    def __init__(self, opts: GenOptions) -> None:
        self.opts = opts
        self.recent: list[int] = []
        self.key: mx.array | None = None
        if opts.temp > 0:
            seed = (opts.seed if opts.seed is not None
                    else int(np.random.default_rng().integers(2**63)))
            self.key = mx.random.key(seed)

    def record(self, token: int) -> None:
        self.recent.append(token)
        if len(self.recent) > REPETITION_WINDOW:
            del self.recent[0]

    def draw(self, logits: mx.array) -> int:
        """A sampled token from this row's (vocab,) logits (temperature > 0)."""
        assert self.key is not None
        logprobs = logits - mx.logsumexp(logits, keepdims=True)
        if self.opts.top_p < 1.0:
            logprobs = apply_top_p(logprobs[None], self.opts.top_p)[0]
        self.key, sub = mx.random.split(self.key)
        return int(np.array(mx.random.categorical(logprobs * (1.0 / self.opts.temp), key=sub)))


def penalise(samplers: list[RowSampler], logits: mx.array) -> mx.array:
    """CTRL's repetition penalty (as mlx-lm and llama.cpp apply it), all rows in one scatter:
    the logits of a row's recently generated tokens are divided by its penalty when
    positive, multiplied when negative."""
    rows: list[int] = []
    cols: list[int] = []
    factors: list[float] = []
    for i, s in enumerate(samplers):
        if s.opts.repetition_penalty != 1.0 and s.recent:
            ids = sorted(set(s.recent))
            rows += [i] * len(ids)
            cols += ids
            factors += [s.opts.repetition_penalty] * len(ids)
    if not rows:
        return logits
    r, c, f = mx.array(rows), mx.array(cols), mx.array(factors)
    seen = logits[r, c]
    logits[r, c] = mx.where(seen < 0, seen * f, seen / f)
    return logits


def pick_tokens(samplers: list[RowSampler], logits: mx.array) -> list[int]:
    """One token per row from (rows, vocab) logits, recorded in each row's history."""
    logits = penalise(samplers, logits)
    greedy = np.array(mx.argmax(logits, axis=-1)).tolist()
    out = []
    for i, s in enumerate(samplers):
        token = int(greedy[i]) if s.key is None else s.draw(logits[i])
        s.record(token)
        out.append(token)
    return out
