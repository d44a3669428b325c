"""Batched capture of hidden states at decoder block outputs.

Texts are right-padded; causal attention makes the pads after a text's last real token
invisible to it, so batched results equal one-at-a-time results up to float rounding.
The forward pass stops after the deepest requested block (no LM head is computed).
Results are cached on disk, keyed by model fingerprint, dtype, texts and options.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mlx.core as mx
import numpy as np

from .fsutil import atomic_path, cache_dir, sha256_text
from .layers import BlockHook, hooked_blocks
from .loading import LoadedModel
from .progress import ProgressCallback, progress_bar

Reduce = Literal["last", "mean"]


@dataclass(frozen=True)
class CaptureOptions:
    layers: tuple[int, ...] | None = None  # None = every block
    reduce: Reduce = "last"
    chat_template: bool = False
    batch_size: int = 16


class _StopForward(Exception):
    """Raised by the deepest hook: later blocks and the LM head are not needed."""


def format_text(lm: LoadedModel, text: str, chat_template: bool) -> str:
    if chat_template:
        return lm.chat_prompt([{"role": "user", "content": text}])
    return text


def tokenize(lm: LoadedModel, texts: Sequence[str], chat_template: bool) -> list[list[int]]:
    out = []
    for t in texts:
        ids = list(lm.tokenizer.encode(format_text(lm, t, chat_template)))
        out.append(ids or [lm.tokenizer.eos_token_id or 0])
    return out


def _pad_id(lm: LoadedModel) -> int:
    pad = getattr(lm.tokenizer, "pad_token_id", None)
    if pad is None:
        pad = lm.tokenizer.eos_token_id
    return int(pad or 0)


def forward_states(
    lm: LoadedModel, batch: list[list[int]], layers: Sequence[int], reduce: Reduce
) -> mx.array:
    """One forward pass over a right-padded batch; returns (batch, len(layers), hidden)."""
    lengths = mx.array([len(ids) for ids in batch])
    width = max(len(ids) for ids in batch)
    pad = _pad_id(lm)
    tokens = mx.array([ids + [pad] * (width - len(ids)) for ids in batch])
    last = lengths - 1
    valid = (mx.arange(width)[None, :] < lengths[:, None]).astype(mx.float32)
    wanted = set(layers)
    deepest = max(layers)
    recorded: dict[int, mx.array] = {}

    def record(k: int, h: mx.array) -> mx.array:
        if k in wanted:
            if reduce == "last":
                recorded[k] = mx.take_along_axis(h, last[:, None, None], axis=1)[:, 0, :]
            else:
                hf = h.astype(mx.float32) * valid[:, :, None]
                recorded[k] = hf.sum(axis=1) / lengths[:, None].astype(mx.float32)
        if k == deepest:
            raise _StopForward
        return h

    hooks: dict[int, BlockHook] = {k: record for k in range(deepest + 1)}
    with hooked_blocks(lm.model, hooks), suppress(_StopForward):
        lm.model(tokens)
    return mx.stack([recorded[k].astype(mx.float32) for k in layers], axis=1)


def capture_key(lm: LoadedModel, texts: Sequence[str], opts: CaptureOptions,
                layers: Sequence[int]) -> str:
    options = json.dumps({"layers": list(layers), "reduce": opts.reduce,
                          "template": opts.chat_template, "dtype": lm.dtype})
    return sha256_text(lm.fingerprint, options, *texts)[:32]


def capture(
    lm: LoadedModel,
    texts: Sequence[str],
    opts: CaptureOptions = CaptureOptions(),
    *,
    use_cache: bool = True,
    show_progress: bool = True,
    callback: ProgressCallback | None = None,
    description: str = "capturing",
) -> np.ndarray:
    """Hidden states at block outputs: float32 array of shape (texts, layers, hidden)."""
    layers = list(opts.layers) if opts.layers is not None else list(range(lm.num_layers))
    cache_file: Path | None = None
    if use_cache:
        cache_file = cache_dir() / "activations" / f"{capture_key(lm, texts, opts, layers)}.npy"
        if cache_file.is_file():
            cached: np.ndarray = np.load(cache_file, allow_pickle=False)
            if callback:
                callback(len(texts), len(texts))
            return cached
    tokenized = tokenize(lm, texts, opts.chat_template)
    order = sorted(range(len(texts)), key=lambda i: len(tokenized[i]))  # less padding
    out = np.zeros((len(texts), len(layers), lm.hidden_size), dtype=np.float32)
    with progress_bar(len(texts), description, show_progress, callback) as advance:
        for start in range(0, len(order), opts.batch_size):
            idx = order[start:start + opts.batch_size]
            states = forward_states(lm, [tokenized[i] for i in idx], layers, opts.reduce)
            mx.eval(states)
            out[idx] = np.array(states)
            advance(len(idx))
    if cache_file is not None:
        with atomic_path(cache_file) as tmp, open(tmp, "wb") as f:
            np.save(f, out, allow_pickle=False)
    return out
