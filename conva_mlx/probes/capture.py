"""Batched capture of hidden states at decoder block outputs.

Texts are right-padded; causal attention makes the pads after a text's last real token
invisible to it, so batched results equal one-at-a-time results up to float rounding.
The forward pass stops after the deepest requested block (no LM head is computed).
Results are cached on disk, keyed by model fingerprint, dtype, texts and options.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mlx.core as mx
import numpy as np
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import KVCache, make_prompt_cache

from conva_mlx.fsutil import atomic_path, cache_dir, sha256_text
from conva_mlx.models.layers import BlockHook, hooked_blocks, skipped_blocks
from conva_mlx.models.loading import LoadedModel
from conva_mlx.progress import ProgressCallback, progress_bar

Reduce = Literal["last", "mean"]


@dataclass(frozen=True)
class CaptureOptions:
    layers: tuple[int, ...] | None = None  # None = every block
    reduce: Reduce = "last"
    chat_template: bool = False
    batch_size: int = 32


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


PrefixState = list[tuple[mx.array, mx.array]]  # per block (keys, values) of a shared prefix
MIN_SHARED_PREFIX = 8


def shared_prefix_length(tokenized: Sequence[list[int]]) -> int:
    """Length of the token prefix common to all texts, leaving every text >= 1 own token."""
    if not tokenized:
        return 0
    first = tokenized[0]
    n = min(len(t) for t in tokenized) - 1
    for t in tokenized[1:]:
        i = 0
        while i < n and t[i] == first[i]:
            i += 1
        n = i
    return max(0, n)


def prefix_state(lm: LoadedModel, prefix: list[int]) -> PrefixState | None:
    """KV cache contents after the shared prefix (e.g. a chat template's system prompt).

    None when the model uses cache types other than the plain KVCache (sliding windows,
    linear attention): those fall back to full passes.
    """
    cache = make_prompt_cache(lm.model)
    if not all(type(c) is KVCache for c in cache):
        return None
    lm.model(mx.array([prefix]), cache=cache)
    state = [(c.keys[..., : c.offset, :], c.values[..., : c.offset, :]) for c in cache]
    mx.eval(state)
    return state


class PrefixCache:
    """A one-shot attention cache holding a shared prefix's keys and values.

    Capture runs one forward pass per batch after the prefix, so the new keys are simply
    appended; mlx-lm's KVCache would zero-fill and copy into 256-step buffers and build
    an explicit mask (about 9% slower on the gate's templated captures).
    """

    def __init__(self, keys: mx.array, values: mx.array) -> None:
        self.keys, self.values = keys, values
        self.offset = keys.shape[2]

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        self.keys = mx.concatenate([self.keys, keys], axis=2)
        self.values = mx.concatenate([self.values, values], axis=2)
        self.offset += keys.shape[2]
        return self.keys, self.values

    def make_mask(self, n: int, return_array: bool = False,
                  window_size: int | None = None) -> Any:
        if return_array or window_size is not None:
            return create_causal_mask(n, self.offset, window_size=window_size)
        return "causal"  # MLX aligns a causal mask to the last keys: right for a prefix


def _batch_cache(prefix: PrefixState, batch: int) -> list[PrefixCache]:
    return [PrefixCache(mx.repeat(k, batch, axis=0), mx.repeat(v, batch, axis=0))
            for k, v in prefix]


def forward_states(
    lm: LoadedModel, batch: list[list[int]], layers: Sequence[int], reduce: Reduce,
    prefix: PrefixState | None = None,
) -> mx.array:
    """One forward pass over a right-padded batch; returns (batch, len(layers), hidden).

    With `prefix`, the batch continues from that shared KV state (reduce "last" only).
    """
    return _forward(lm, batch, layers, reduce, prefix)[0]


# Where a forward pass stopped: the block index and that block's output (whole sequence).
Resume = tuple[int, mx.array]


def _forward(
    lm: LoadedModel, batch: list[list[int]], layers: Sequence[int], reduce: Reduce,
    prefix: PrefixState | None = None, resume: Resume | None = None,
) -> tuple[mx.array, mx.array]:
    """`forward_states`, also returning the deepest block's output, optionally resuming
    after block `resume[0]` from its output (every requested layer must lie beyond it)."""
    lengths = mx.array([len(ids) for ids in batch])
    width = max(len(ids) for ids in batch)
    pad = _pad_id(lm)
    tokens = mx.array([ids + [pad] * (width - len(ids)) for ids in batch])
    last = lengths - 1
    valid = (mx.arange(width)[None, :] < lengths[:, None]).astype(mx.float32)
    wanted = set(layers)
    deepest = max(layers)
    first = 0 if resume is None else resume[0] + 1
    assert min(layers) >= first, "a resumed pass cannot record blocks it skips"
    recorded: dict[int, mx.array] = {}

    def record(k: int, h: mx.array) -> mx.array:
        if k in wanted:
            if reduce == "last":
                recorded[k] = mx.take_along_axis(h, last[:, None, None], axis=1)[:, 0, :]
            else:
                hf = h.astype(mx.float32) * valid[:, :, None]
                recorded[k] = hf.sum(axis=1) / lengths[:, None].astype(mx.float32)
        if k == deepest:
            recorded[-1] = h
            raise _StopForward
        return h

    hooks: dict[int, BlockHook] = {k: record for k in range(first, deepest + 1)}
    cache = _batch_cache(prefix, len(batch)) if prefix is not None else None
    with ExitStack() as stack:
        stack.enter_context(hooked_blocks(lm.model, hooks))
        if resume is not None:
            stack.enter_context(skipped_blocks(lm.model, resume[0], resume[1]))
        with suppress(_StopForward):
            lm.model(tokens, cache=cache)
    return mx.stack([recorded[k].astype(mx.float32) for k in layers], axis=1), recorded[-1]


def capture_key(lm: LoadedModel, texts: Sequence[str], opts: CaptureOptions,
                layers: Sequence[int]) -> str:
    options = json.dumps({"layers": list(layers), "reduce": opts.reduce,
                          "template": opts.chat_template, "dtype": lm.dtype})
    return sha256_text(lm.fingerprint, options, *texts)[:32]


@dataclass
class _Prepared:
    tokenized: list[list[int]]  # after the shared prefix when `prefix` is set
    prefix: PrefixState | None
    batches: list[list[int]]  # text indices per batch, shortest texts first


def _prepare(lm: LoadedModel, texts: Sequence[str], opts: CaptureOptions) -> _Prepared:
    tokenized = tokenize(lm, texts, opts.chat_template)
    # Texts sharing a long prefix (a chat template) reuse its KV state instead of
    # recomputing it for every text; results equal the full pass up to float rounding.
    shared = shared_prefix_length(tokenized) if opts.reduce == "last" and len(texts) > 1 else 0
    prefix: PrefixState | None = None
    if shared >= MIN_SHARED_PREFIX:
        prefix = prefix_state(lm, tokenized[0][:shared])
        if prefix is not None:
            tokenized = [t[shared:] for t in tokenized]
    order = sorted(range(len(texts)), key=lambda i: len(tokenized[i]))  # less padding
    batches = [order[i:i + opts.batch_size] for i in range(0, len(order), opts.batch_size)]
    return _Prepared(tokenized, prefix, batches)


def _cache_file(lm: LoadedModel, texts: Sequence[str], opts: CaptureOptions,
                layers: Sequence[int]) -> Path:
    return cache_dir() / "activations" / f"{capture_key(lm, texts, opts, layers)}.npy"


def _save(cache_file: Path, out: np.ndarray) -> None:
    with atomic_path(cache_file) as tmp, open(tmp, "wb") as f:
        np.save(f, out, allow_pickle=False)


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
        cache_file = _cache_file(lm, texts, opts, layers)
        if cache_file.is_file():
            cached: np.ndarray = np.load(cache_file, allow_pickle=False)
            if callback:
                callback(len(texts), len(texts))
            return cached
    prep = _prepare(lm, texts, opts)
    out = np.zeros((len(texts), len(layers), lm.hidden_size), dtype=np.float32)
    with progress_bar(len(texts), description, show_progress, callback) as advance:
        for idx in prep.batches:
            states = forward_states(lm, [prep.tokenized[i] for i in idx], layers, opts.reduce,
                                    prep.prefix)
            mx.eval(states)
            out[idx] = np.array(states)
            advance(len(idx))
    if cache_file is not None:
        _save(cache_file, out)
    return out


RESUMABLE_ARCHITECTURES = ("llama", "qwen2", "qwen3")  # blocks return a plain array


class StagedCapture:
    """One set of texts captured at deeper and deeper blocks (the gate's shallow-first
    search): each stage's forward pass resumes from the hidden states at which the
    previous stage stopped, so no block runs twice over the same texts.

    The saved states are every batch's whole sequence at the deepest block captured so
    far: texts x tokens x hidden floats in memory (about 0.7 GB for the gate's 3,040
    texts on a 1536-wide model). Results equal `capture` at those layers (the same
    batches and the same operations) and share its disk cache.
    """

    def __init__(self, lm: LoadedModel, texts: Sequence[str], opts: CaptureOptions,
                 use_cache: bool = True, resume: bool = True) -> None:
        """`resume=False` runs every stage from the embeddings (for comparisons)."""
        self.lm, self.texts, self.opts, self.use_cache = lm, list(texts), opts, use_cache
        self.resume = resume and lm.architecture in RESUMABLE_ARCHITECTURES
        self._prep: _Prepared | None = None
        self._resume: tuple[int, list[mx.array]] | None = None
        self.blocks_run = 0  # blocks computed per text, over all stages (for reports/tests)

    def capture(self, layers: Sequence[int], *, show_progress: bool = True,
                callback: ProgressCallback | None = None,
                description: str = "capturing") -> np.ndarray:
        layers = list(layers)
        opts = CaptureOptions(layers=tuple(layers), reduce=self.opts.reduce,
                              chat_template=self.opts.chat_template,
                              batch_size=self.opts.batch_size)
        cache_file = _cache_file(self.lm, self.texts, opts, layers) if self.use_cache else None
        if cache_file is not None and cache_file.is_file():
            cached: np.ndarray = np.load(cache_file, allow_pickle=False)
            if callback:
                callback(len(self.texts), len(self.texts))
            return cached
        if self._prep is None:
            self._prep = _prepare(self.lm, self.texts, opts)
        prep = self._prep
        resume, self._resume = self._resume, None  # consumed below, batch by batch
        if not self.resume or (resume is not None and resume[0] >= min(layers)):
            resume = None
        self.blocks_run += max(layers) + 1 - (0 if resume is None else resume[0] + 1)
        out = np.zeros((len(self.texts), len(layers), self.lm.hidden_size), dtype=np.float32)
        kept: list[mx.array] = []
        with progress_bar(len(self.texts), description, show_progress, callback) as advance:
            for b, idx in enumerate(prep.batches):
                start = None if resume is None else (resume[0], resume[1][b])
                states, h = _forward(self.lm, [prep.tokenized[i] for i in idx], layers,
                                     opts.reduce, prep.prefix, start)
                mx.eval(states, h)
                out[idx] = np.array(states)
                if self.resume:
                    kept.append(h)
                if resume is not None:
                    resume[1][b] = h  # frees the shallower state: only `kept` holds it now
                advance(len(idx))
        self._resume = (max(layers), kept) if self.resume else None
        if cache_file is not None:
            _save(cache_file, out)
        return out
