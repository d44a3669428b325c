"""Batched steered generation: many prompts, one method and one set of targets.

Decoding a small model on a CPU is memory-bound (each step reads every weight), so B
prompts decoded together cost little more than one. This mirrors SteeringSession.generate
step by step for a left-padded batch (mlx-lm's BatchKVCache gives every row its own
positions and padding mask):

1. ConVA with the gate: one unsteered batched prefill reads every row's gate score.
2. The steering prefill: prompt mode measures each row's delta_l from its own last-token
   state (rows whose gate is closed get a zero delta, so they stay exactly unsteered);
   CAA adds its fixed vectors; none / ICA run no hooks.
3. As in the single-prompt path the last prompt token is trimmed from the cache and fed
   again with the generation hooks, then greedy (or sampled) decoding runs for all rows.
Token mode keeps per-position statistics for one sequence, so it runs prompt by prompt.
"""

from __future__ import annotations

import time
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache
from mlx_lm.sample_utils import make_sampler

from .layers import BlockHook, hooked_blocks
from .steering import (
    GateReport,
    GenerationResult,
    GenOptions,
    LayerReport,
    PromptModeMeasure,
    SteerConfig,
    SteeringSession,
    Target,
    _add_fixed,
    _norm,
)


def supports_batching(model: Any) -> bool:
    """Only plain KV caches have a batched (left-padded) counterpart in mlx-lm."""
    return all(type(c) is KVCache for c in make_prompt_cache(model))


def left_pad(seqs: list[mx.array]) -> tuple[mx.array, list[int]]:
    """Stack token sequences right-aligned; returns (B, L) tokens and each row's padding."""
    width = max(int(s.size) for s in seqs)
    pads = [width - int(s.size) for s in seqs]
    rows = [mx.concatenate([mx.zeros((p,), dtype=s.dtype), s]) if p else s
            for s, p in zip(seqs, pads)]
    return mx.stack(rows), pads


class _Batch:
    """A left-padded batch of prompts and the prefill helpers that run on it."""

    def __init__(self, session: SteeringSession, tokens: list[mx.array]) -> None:
        self.model = session.lm.model
        self.tokens, self.pads = left_pad(tokens)
        self.size = len(tokens)

    def prefill(self, hooks: dict[int, BlockHook]) -> list[BatchKVCache]:
        """Run the whole prompt with `hooks`, then trim its last token (fed again later).

        The last position's logits are kept in `self.logits` (for scoring)."""
        cache = [BatchKVCache(self.pads) for _ in make_prompt_cache(self.model)]
        with hooked_blocks(self.model, hooks):
            self.logits = self.model(self.tokens, cache=cache)[:, -1]
        mx.eval(self.logits, [c.state[:2] for c in cache])
        for c in cache:
            c.trim(1)
        return cache


def _gate_scores(session: SteeringSession, batch: _Batch, gate_index: list[int]
                 ) -> tuple[list[BatchKVCache], np.ndarray]:
    """Unsteered prefill; each row's gate score at its templated query's last token."""
    gate = session.pack.gate
    assert gate is not None
    width = int(batch.tokens.shape[1])
    rows = mx.arange(batch.size)
    cols = mx.array([pad + (i if i >= 0 else width - pad + i)
                     for pad, i in zip(batch.pads, gate_index)])
    state: dict[str, mx.array] = {}

    def read_gate(_k: int, h: mx.array) -> mx.array:
        state["e"] = h[rows, cols]
        return h

    cache = batch.prefill({gate.layer: read_gate})
    return cache, gate.scores(np.array(state["e"].astype(mx.float32)))


def _decode(session: SteeringSession, batch: _Batch, cache: list[BatchKVCache],
            hooks: dict[int, BlockHook], opts: GenOptions) -> list[list[int]]:
    """Feed the trimmed last prompt token, then decode until EOS or max_tokens per row."""
    model, tokenizer = session.lm.model, session.lm.tokenizer
    eos = set(tokenizer.eos_token_ids)
    sampler = make_sampler(temp=opts.temp, top_p=opts.top_p)
    if opts.seed is not None:
        mx.random.seed(opts.seed)
    out: list[list[int]] = [[] for _ in range(batch.size)]
    finished = [False] * batch.size
    y = batch.tokens[:, -1]
    with hooked_blocks(model, hooks):
        for _ in range(opts.max_tokens):
            logits = model(y[:, None], cache=cache)[:, -1].astype(mx.float32)
            y = sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
            for i, t in enumerate(np.array(y).tolist()):
                if finished[i]:
                    continue
                if t in eos:
                    finished[i] = True
                else:
                    out[i].append(t)
            if all(finished):
                break
    return out


def _steer_prefill(session: SteeringSession, batch: _Batch, cfg: SteerConfig,
                   targets: list[Target], gate_index: list[int]
                   ) -> tuple[list[BatchKVCache], list[GateReport], dict[int, BlockHook],
                              list[list[LayerReport]]]:
    """Steps 1-2 of the module docstring: gate pass, then the steering prefill."""
    gate = session.pack.gate
    gates = [GateReport(None, True, None, False)] * batch.size
    cache: list[BatchKVCache] | None = None
    hooks: dict[int, BlockHook] = {}
    reports: list[list[LayerReport]] = [[] for _ in range(batch.size)]
    if cfg.method == "conva" and cfg.gate and gate is not None:
        cache, scores = _gate_scores(session, batch, gate_index)
        gates = [GateReport(float(s), bool(s >= gate.threshold), gate.threshold, True)
                 for s in scores]
    if cfg.method == "caa":
        deltas = session._caa_deltas(cfg, targets)
        hooks = {k: _add_fixed(d) for k, d in deltas.items()}
        cache = batch.prefill(hooks)
        reports = [[LayerReport(k, {}, {}, _norm(d)) for k, d in sorted(deltas.items())]
                   for _ in range(batch.size)]
    elif cfg.method == "conva" and any(g.open for g in gates):
        measure = PromptModeMeasure(session._plan(cfg, targets),
                                    mx.array([1.0 if g.open else 0.0 for g in gates]))
        cache = batch.prefill(measure.hooks())
        hooks, reports = measure.generation_hooks(), measure.reports()
    elif cache is None:
        cache = batch.prefill({})
    return cache, gates, hooks, reports


def generate_batch(session: SteeringSession, prompts: list[str], cfg: SteerConfig,
                   opts: GenOptions) -> list[GenerationResult]:
    """Steered replies for several single-turn prompts with the same settings."""
    start = time.perf_counter()
    prepared = [session._prepare(p, cfg) for p in prompts]
    batch = _Batch(session, [p.tokens for p in prepared])
    cache, gates, hooks, reports = _steer_prefill(session, batch, cfg, prepared[0].targets,
                                                  [p.gate_index for p in prepared])
    out = _decode(session, batch, cache, hooks, opts)
    seconds = (time.perf_counter() - start) / batch.size
    tokenizer = session.lm.tokenizer
    return [GenerationResult(tokenizer.decode(toks), toks, g, rep, cfg.method, cfg.mode,
                             p.targets, int(p.tokens.size), 0.0, seconds)
            for toks, g, rep, p in zip(out, gates, reports, prepared)]


def next_token_logits_batch(session: SteeringSession, prompts: list[str], cfg: SteerConfig,
                            reply_prefix: str = "") -> list[tuple[mx.array, GateReport]]:
    """Next-token logits after each templated prompt + `reply_prefix` (for MCQ scoring)."""
    prepared = [session._prepare(p, cfg, reply_prefix) for p in prompts]
    batch = _Batch(session, [p.tokens for p in prepared])
    _cache, gates, _hooks, _reports = _steer_prefill(session, batch, cfg, prepared[0].targets,
                                                     [p.gate_index for p in prepared])
    return [(batch.logits[i], g) for i, g in enumerate(gates)]
