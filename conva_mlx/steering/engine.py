"""The steering engine: one prompt or many, as one left-padded batch (one prompt = a batch of 1).

1. ConVA with the gate: an unsteered prefill reads each row's gate score at its templated
   query's last token. A closed gate keeps that cache, so the row stays exactly unsteered.
2. The steering prefill: prompt mode measures each row's delta_l from its own last-token
   state (closed rows get delta 0) and adds it at every position; token mode recomputes it
   at every position (one row only); CAA and the calibrated method add fixed vectors (the
   calibrated one only to rows whose gate opened); none / ICA run no hooks.
3. Each prefill trims the last prompt token from its cache; decoding feeds it again with
   the generation hooks, in the one decode loop (`decode_steps`, with the one sampler of
   sampling.py): one row in the model's own caches (any kind, streaming), several rows
   together in mlx-lm's `BatchKVCache` (`decode_batch`); the server's batcher drives the
   same sampler.
4. Scoring (`continuation_logprobs`) feeds written continuations instead of sampled
   tokens: each prompt row is repeated once per continuation and all are fed at once under
   the hooks decoding would add, so a score is what decoding those tokens would see.
Decoding a small model on a CPU is memory-bound, so B rows cost little more than one.
"""

from __future__ import annotations

import copy
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache, trim_prompt_cache

from conva_mlx.errors import ConvaError
from conva_mlx.models.layers import BlockHook, hooked_blocks
from conva_mlx.packs.pack import Pack
from conva_mlx.probes.gate import Gate
from conva_mlx.steering.config import GATED_METHODS, GenOptions, SteerConfig, Target
from conva_mlx.steering.hooks import (
    PromptModeMeasure,
    TokenStats,
    add_fixed,
    add_rows,
    caa_deltas,
    caa_reports,
    calibrated_deltas,
    check_probes,
    default_strength,
    layer_plans,
    reports_so_far,
    resolve_targets,
    token_mode_hooks,
)
from conva_mlx.steering.reports import GateReport, LayerReport
from conva_mlx.steering.sampling import RowSampler, pick_tokens

UNGATED = GateReport(score=None, open=True, threshold=None, used=False)
FIXED_METHODS = ("caa", "calibrated")  # one fixed vector per block
PACK_METHODS = ("conva", "caa", "calibrated")


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


class PromptBatch:
    """Left-padded prompts, where each row's gate reads, and the caches they need."""

    def __init__(self, model: Any, tokens: list[mx.array],
                 gate_index: list[int] | None = None) -> None:
        self.model = model
        self.tokens, self.pads = left_pad(tokens)
        self.size = len(tokens)
        index = gate_index if gate_index is not None else [int(t.size) - 1 for t in tokens]
        self.gate_cols = [pad + i for pad, i in zip(self.pads, index)]
        self.logits: mx.array | None = None  # (B, vocab) after the last prefill

    def new_cache(self) -> list[Any]:
        # One unpadded row takes the model's own caches (any kind, recurrent ones included).
        if self.size == 1:
            return make_prompt_cache(self.model)
        return [BatchKVCache(self.pads) for _ in make_prompt_cache(self.model)]

    def prefill(self, hooks: dict[int, BlockHook]) -> list[Any]:
        """Run the prompts with `hooks`, keep the last logits, trim the last token's cache."""
        cache = self.new_cache()
        with hooked_blocks(self.model, hooks):
            self.logits = self.model(self.tokens, cache=cache)[:, -1]
        if self.size == 1:
            mx.eval(self.logits, [c.state for c in cache])
            trim_prompt_cache(cache, 1)
        else:  # BatchKVCache.state also holds python ints
            mx.eval(self.logits, [c.state[:2] for c in cache])
            for c in cache:
                c.trim(1)
        return cache

    def gate_pass(self, gate: Gate) -> tuple[list[Any], list[GateReport]]:
        """Unsteered prefill; each row's gate score and decision."""
        rows, cols = mx.arange(self.size), mx.array(self.gate_cols)
        state: dict[str, mx.array] = {}

        def read_gate(_k: int, h: mx.array) -> mx.array:
            state["e"] = h[rows, cols]
            return h

        cache = self.prefill({gate.layer: read_gate})
        scores = gate.scores(np.array(state["e"].astype(mx.float32)))
        return cache, [GateReport(score=float(s), open=bool(s >= gate.threshold),
                                  threshold=gate.threshold, used=True) for s in scores]


@dataclass
class Prefilled:
    """A batch after its prefills: ready to decode or to score."""

    cache: list[Any]
    gates: list[GateReport]
    hooks: dict[int, BlockHook]  # what decoding adds at every new position
    reports: list[list[LayerReport]]  # per row (token mode: filled from token_stats)
    token_stats: TokenStats | None
    logits: mx.array  # (B, vocab) next-token logits after each prompt
    deltas: dict[int, mx.array]  # block -> (B, hidden) fixed per-row deltas (prompt mode, CAA)

    def row_reports(self, i: int = 0) -> list[LayerReport]:
        """Row i's per-block reports so far (token mode: from its running statistics)."""
        return reports_so_far(self.token_stats, self.reports[i])


def resolve_defaults(pack: Pack | None, cfg: SteerConfig) -> SteerConfig:
    """`cfg` with `instruct` and `strength` decided: as given, else the pack's defaults for
    the calibrated method (instruction + push where its calibration says so, `calibrate
    --instruct`; its default strength, `calibrate --default-strength`)."""
    if cfg.instruct is not None and cfg.strength is not None:
        return cfg
    cal = pack.calibration if pack is not None and cfg.method == "calibrated" else None
    out = copy.copy(cfg)
    if out.instruct is None:
        out.instruct = cal is not None and cal.instruct
    if out.strength is None:
        out.strength = default_strength(pack) if cfg.method == "calibrated" else 1.0
    return out


def check_request(pack: Pack | None, cfg: SteerConfig) -> list[Target]:
    """The one check of steering settings against a pack (the session's requests and
    `steered()` both run it); returns the targets with their levels filled in."""
    if pack is None and cfg.method in PACK_METHODS:
        raise ConvaError(f"method {cfg.method} needs a pack (only none and ica run without)")
    targets = resolve_targets(pack, cfg.targets, cfg.method)
    if cfg.method != "none" and not targets:
        raise ConvaError("choose at least one value to steer (or method none)")
    if pack is not None and cfg.method == "conva":
        check_probes(pack, targets)
    if pack is not None and cfg.method in GATED_METHODS and cfg.gate and pack.gate is None:
        raise ConvaError("this pack has no gate (imported vector?); turn the gate off "
                         "(--no-gate, gate=False)")
    return targets


@dataclass
class Push:
    """What a method adds to a batch whose gates are decided: the one place where the
    methods are told apart. Prompt mode's deltas exist only after its measuring prefill
    (`measure`'s hooks); `measured()` then fills in the rest."""

    reports: list[list[LayerReport]]  # per row
    hooks: dict[int, BlockHook] = field(default_factory=dict)  # added at every new position
    deltas: dict[int, mx.array] = field(default_factory=dict)  # block -> (B, hidden)
    stats: TokenStats | None = None  # token mode
    measure: PromptModeMeasure | None = None  # prompt mode, until measured

    @property
    def steers(self) -> bool:
        return bool(self.hooks) or self.measure is not None

    def prefill_hooks(self) -> dict[int, BlockHook]:
        return self.measure.hooks() if self.measure is not None else self.hooks

    def measured(self) -> None:
        """After the prefill with `prefill_hooks()`: prompt mode's deltas, hooks, reports."""
        if self.measure is not None:
            m, self.measure = self.measure, None
            self.hooks, self.reports, self.deltas = (m.generation_hooks(), m.reports(),
                                                     dict(m.deltas))


def plan_push(pack: Pack | None, cfg: SteerConfig, targets: list[Target],
              gates: list[GateReport]) -> Push:
    """The push of `cfg` for rows with these gate decisions (closed rows get none)."""
    on = [g.open for g in gates]
    if pack is None or not any(on):
        return Push([[] for _ in gates])
    # closed rows get delta 0, so they stay exactly unsteered (None: every row is open)
    rows_on = None if all(on) else mx.array([1.0 if o else 0.0 for o in on])
    if cfg.method in FIXED_METHODS:
        fixed = (caa_deltas(pack, cfg, targets) if cfg.method == "caa"
                 else calibrated_deltas(pack, cfg, targets))
        reports = [caa_reports(fixed) if o else [] for o in on]
        if rows_on is None:
            return Push(reports, {k: add_fixed(d) for k, d in fixed.items()},
                        {k: mx.broadcast_to(d, (len(on), d.shape[-1]))
                         for k, d in fixed.items()})
        deltas = {k: rows_on[:, None] * d[None, :] for k, d in fixed.items()}
        return Push(reports, {k: add_rows(d) for k, d in deltas.items()}, deltas)
    if cfg.method == "conva":
        plans = layer_plans(pack, cfg, targets)
        if cfg.mode == "token":
            if len(on) != 1:
                raise ValueError("token mode keeps one sequence's statistics: one row only")
            hooks, stats = token_mode_hooks(plans)
            return Push([[]], hooks, stats=stats)
        return Push([[] for _ in on], measure=PromptModeMeasure(
            plans, rows_on, cfg.positions == "generated"))
    return Push([[] for _ in on])  # none and ICA add nothing


def gate_decisions(batch: PromptBatch, pack: Pack | None, cfg: SteerConfig
                   ) -> tuple[list[Any] | None, list[GateReport]]:
    """Step 1: each row's gate decision, and the unsteered cache of the pass that read it
    (None, every row open, where the method or the settings use no gate)."""
    gate = pack.gate if pack is not None else None
    if cfg.method in GATED_METHODS and cfg.gate and gate is not None:
        return batch.gate_pass(gate)
    return None, [UNGATED] * batch.size


def steer_prefill(batch: PromptBatch, pack: Pack | None, cfg: SteerConfig,
                  targets: list[Target],
                  decided: tuple[list[Any] | None, list[GateReport]] | None = None
                  ) -> Prefilled:
    """Steps 1-2 of the module docstring. `decided`: the gate decisions already taken (and
    the cache of that pass when it ran on this batch's tokens)."""
    cache, gates = decided if decided is not None else gate_decisions(batch, pack, cfg)
    push = plan_push(pack, cfg, targets, gates)
    if push.steers or cache is None:  # a closed gate's unsteered cache is kept as it is
        cache = batch.prefill(push.prefill_hooks())
        push.measured()
    assert batch.logits is not None
    return Prefilled(cache, gates, push.hooks, push.reports, push.stats, batch.logits,
                     push.deltas)


def decode_step(model: Any, last: mx.array, cache: list[Any], samplers: list[RowSampler]
                ) -> list[int]:
    """One decode step for a batch (under the caller's hooks): feed each row's last token,
    pick each row's next one with its own sampler."""
    logits = model(last[:, None], cache=cache)[:, -1].astype(mx.float32)
    return pick_tokens(samplers, logits)


def decode_steps(model: Any, last: mx.array, cache: list[Any], hooks: dict[int, BlockHook],
                 samplers: list[RowSampler], max_tokens: int
                 ) -> Generator[list[int], None, None]:
    """The one decode loop: feed each row's last prompt token, then yield every row's next
    token (end-of-sequence tokens included), step after step, up to `max_tokens` steps.
    Stop iterating to stop early; the model is restored either way."""
    y = last
    with hooked_blocks(model, hooks):
        for _ in range(max_tokens):
            picks = decode_step(model, y, cache, samplers)
            yield picks
            y = mx.array(picks, dtype=y.dtype)


def decode_batch(model: Any, tokenizer: Any, batch: PromptBatch, cache: list[Any],
                 hooks: dict[int, BlockHook], opts: GenOptions) -> list[list[int]]:
    """Each row's reply tokens (without the end-of-sequence token)."""
    eos = set(tokenizer.eos_token_ids)
    out: list[list[int]] = [[] for _ in range(batch.size)]
    finished = [False] * batch.size
    samplers = [RowSampler(opts) for _ in range(batch.size)]
    for picks in decode_steps(model, batch.tokens[:, -1], cache, hooks, samplers,
                              opts.max_tokens):
        for i, t in enumerate(picks):
            if finished[i]:
                continue
            if t in eos:
                finished[i] = True
            else:
                out[i].append(t)
        if all(finished):
            break
    return out


def _repeat_cache_rows(cache: list[Any], index: mx.array) -> bool:
    """Repeat (or pick) batch rows of a filled cache in place; False for cache kinds that
    cannot (recurrent or rotating caches: the caller prefills once per continuation)."""
    if not all(type(c) in (KVCache, BatchKVCache) for c in cache):
        return False
    for c in cache:
        if isinstance(c, BatchKVCache):
            c.filter(index)
        else:
            c.keys, c.values = c.keys[index], c.values[index]
    return True


def continuation_logprobs(model: Any, batch: PromptBatch, pre: Prefilled,
                          continuations: list[list[list[int]]]) -> list[list[float]]:
    """Sum of log p(token) over each written continuation, as the start of each row's reply.

    `continuations[i]` are row i's candidate token lists. The prefilled cache is repeated
    once per continuation; each continuation is fed after the trimmed last prompt token with
    the hooks decoding would add (fixed per-row deltas repeated with their row, or token
    mode's per-position hooks), exactly as `decode_batch` would have fed those tokens."""
    index_list = [i for i, conts in enumerate(continuations) for _ in conts]
    flat = [c for conts in continuations for c in conts]
    if any(not c for c in flat):
        raise ValueError("a continuation has no tokens")
    index = mx.array(index_list)
    if not _repeat_cache_rows(pre.cache, index):
        raise ValueError("this model's caches cannot be repeated per continuation")
    hooks = ({k: add_rows(d[index]) for k, d in pre.deltas.items()} if pre.deltas
             else pre.hooks)
    width = max(len(c) for c in flat)
    last = np.array(batch.tokens[:, -1]).tolist()
    inputs = np.zeros((len(flat), width), dtype=np.int32)
    targets = np.zeros((len(flat), width), dtype=np.int32)
    mask = np.zeros((len(flat), width), dtype=np.float32)
    for r, (i, c) in enumerate(zip(index_list, flat)):
        inputs[r, :len(c)] = [last[i], *c[:-1]]
        targets[r, :len(c)] = c
        mask[r, :len(c)] = 1.0
    with hooked_blocks(model, hooks):
        logits = model(mx.array(inputs), cache=pre.cache).astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    picked = mx.take_along_axis(logp, mx.array(targets)[..., None], axis=-1)[..., 0]
    sums = np.array((picked * mx.array(mask)).sum(axis=-1)).tolist()
    out: list[list[float]] = []
    pos = 0
    for conts in continuations:
        out.append([float(x) for x in sums[pos:pos + len(conts)]])
        pos += len(conts)
    return out
