"""Continuous batching with per-row steering, on one worker thread that owns the model.

A request joins the running batch after its own prefill (the steering engine's gate pass
and steering prefill, exactly as `generate` runs them for one prompt); its KV cache is
merged into the batch's left-padded `BatchKVCache`. Every decode step feeds one token per
row; each steered block adds a (B, hidden) matrix of the rows' own fixed deltas (prompt
mode, CAA; zero rows for the others), and token-mode rows run their own token-mode hook
(the engine's, which recomputes the minimal delta at their own state). Rows leave as they
finish (EOS, max tokens, a stop string, a client gone) and the cache is filtered down to the
rest.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache

from conva_mlx.errors import ConvaError
from conva_mlx.models.layers import BlockHook, hooked_blocks
from conva_mlx.steering.config import GenOptions, SteerConfig
from conva_mlx.steering.engine import decode_step, supports_batching
from conva_mlx.steering.hooks import TokenStats, reports_so_far
from conva_mlx.steering.reports import GateReport, GenerationResult, LayerReport
from conva_mlx.steering.sampling import RowSampler
from conva_mlx.steering.session import Prepared, SteeringSession


@dataclass
class Event:
    """What a request hears from the worker: new text, then one final event."""

    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | None (more to come)
    result: GenerationResult | None = None  # on the final event
    error: str | None = None  # the request failed (the server keeps serving)


@dataclass
class Job:
    prepared: Prepared
    cfg: SteerConfig
    opts: GenOptions  # max tokens and sampling
    emit: Callable[[Event], None]  # must be thread-safe
    stop: list[str] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Row:
    job: Job
    detok: Any
    gate: GateReport
    reports: list[LayerReport]
    deltas: dict[int, mx.array]  # block -> (hidden,)
    token_hooks: dict[int, BlockHook]  # token mode: the row's own per-position hooks
    token_stats: TokenStats | None  # ... and the statistics they keep
    sampler: RowSampler
    start: float
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of `text` already emitted


class ContinuousBatcher:
    """Owns the model on one thread; `submit` jobs from any thread."""

    def __init__(self, session: SteeringSession, max_batch: int = 16) -> None:
        if not supports_batching(session.lm.model):
            raise ConvaError("this model's KV cache kind cannot be batched; serve needs plain "
                             "KV caches (Llama, Qwen2, Qwen3)")
        self.session = session
        self.max_batch = max(1, max_batch)
        self.eos = set(session.lm.tokenizer.eos_token_ids)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._rows: list[_Row] = []
        self._cache: list[Any] | None = None
        self._y: mx.array | None = None
        self._hooks: dict[int, BlockHook] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="conva-batcher", daemon=True)
        self.steps = 0
        self.peak_rows = 0

    # ----- control ----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._queue.put(None)
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    @property
    def active(self) -> int:
        return len(self._rows)

    # ----- the loop ---------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopped.is_set():
            self._admit(block=not self._rows)
            if self._rows:
                try:
                    self._step()
                except Exception as exc:  # a failed step fails its rows, not the server
                    for row in self._rows:
                        row.job.emit(Event(error=f"generation failed: {exc}"))
                    self._rows, self._cache, self._y = [], None, None

    def _admit(self, block: bool) -> None:
        while len(self._rows) < self.max_batch:
            try:
                job = self._queue.get(timeout=0.5) if block else self._queue.get_nowait()
            except queue.Empty:
                return
            if job is None:
                return
            block = False
            if job.cancelled.is_set():
                continue
            try:
                self._join(job)
            except Exception as exc:
                job.emit(Event(error=str(exc)))

    def _join(self, job: Job) -> None:
        session, cfg = self.session, job.cfg
        batch, pre = session.prefill([job.prepared], cfg)
        # Token mode: the prefill's hooks keep steering this row's new positions.
        token_mode = pre.token_stats is not None
        row = _Row(job, session.lm.tokenizer.detokenizer, pre.gates[0], pre.reports[0],
                   {k: d[0] for k, d in pre.deltas.items()},
                   dict(pre.hooks) if token_mode else {}, pre.token_stats,
                   RowSampler(job.opts), time.perf_counter())
        row.detok.reset()
        joined = [BatchKVCache.merge([c]) for c in pre.cache]
        last = batch.tokens[0, -1:]
        if self._cache is None:
            self._cache, self._y = joined, last
        else:
            for mine, theirs in zip(self._cache, joined):
                mine.extend(theirs)
            assert self._y is not None
            self._y = mx.concatenate([self._y, last])
        self._rows.append(row)
        self.peak_rows = max(self.peak_rows, len(self._rows))
        self._hooks = self._build_hooks()

    def _build_hooks(self) -> dict[int, BlockHook]:
        """One hook per block any row steers: its rows' fixed deltas, plus token mode."""
        blocks = sorted({k for r in self._rows for k in (*r.deltas, *r.token_hooks)})
        hidden = self.session.lm.hidden_size
        hooks: dict[int, BlockHook] = {}
        for k in blocks:
            fixed = None
            if any(k in r.deltas for r in self._rows):
                fixed = mx.stack([r.deltas.get(k, mx.zeros((hidden,))) for r in self._rows])
            token_rows = {i: r.token_hooks[k] for i, r in enumerate(self._rows)
                          if k in r.token_hooks}
            hooks[k] = _block_hook(fixed, token_rows, len(self._rows))
        return hooks

    def _step(self) -> None:
        assert self._cache is not None and self._y is not None
        model = self.session.lm.model
        with hooked_blocks(model, self._hooks):
            picks = decode_step(model, self._y, self._cache, [r.sampler for r in self._rows])
        self.steps += 1
        keep: list[int] = []
        for i, (row, token) in enumerate(zip(self._rows, picks)):
            if row.job.cancelled.is_set():
                continue
            if self._advance(row, int(token)):
                keep.append(i)
        self._y = mx.array(picks, dtype=self._y.dtype)
        if len(keep) < len(self._rows):
            self._rows = [self._rows[i] for i in keep]
            if not self._rows:
                self._cache, self._y = None, None
            else:
                idx = mx.array(keep)
                for c in self._cache:
                    c.filter(idx)
                self._y = self._y[idx]
            self._hooks = self._build_hooks()

    def _advance(self, row: _Row, token: int) -> bool:
        """Add the row's new token; emit its text; False when the row is finished."""
        job = row.job
        finish = None
        if token in self.eos:
            finish = "stop"
        else:
            row.tokens.append(token)
            row.detok.add_token(token)
            row.text += row.detok.last_segment
            if len(row.tokens) >= job.opts.max_tokens:
                finish = "length"
        if finish is not None:
            row.detok.finalize()
            row.text += row.detok.last_segment
        cut = _first_stop(row.text, job.stop)
        if cut is not None:
            row.text, finish = row.text[:cut], "stop"
        if finish is None:
            hold = max((len(s) for s in job.stop), default=1) - 1  # a stop may be starting
            safe = max(row.sent, len(row.text) - hold)
            if safe > row.sent:
                job.emit(Event(row.text[row.sent:safe]))
                row.sent = safe
            return True
        seconds = time.perf_counter() - row.start
        result = job.prepared.result(
            row.text, row.tokens, row.gate, reports_so_far(row.token_stats, row.reports),
            job.cfg, seconds=seconds,
            generation_tps=len(row.tokens) / seconds if seconds > 0 else 0.0)
        job.emit(Event(row.text[row.sent:], finish, result))
        return False


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def _block_hook(fixed: mx.array | None, token_rows: dict[int, BlockHook],
                size: int) -> BlockHook:
    """The rows' fixed deltas at once, then each token-mode row through its own hook (the
    one that computes token mode's delta and keeps that row's statistics)."""
    def hook(k: int, h: mx.array) -> mx.array:
        if fixed is not None:
            h = h + fixed[:, None, :].astype(h.dtype)
        if token_rows:
            h = mx.concatenate([token_rows[i](k, h[i:i + 1]) if i in token_rows
                                else h[i:i + 1] for i in range(size)])
        return h
    return hook
