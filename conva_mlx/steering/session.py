"""`SteeringSession`: steer one loaded model with one pack (or chat plainly without one).

Every call validates the request (`prepare`), runs the engine's prefills on a batch of the
prompts (engine.py), then decodes with the engine's one decode loop and sampler (one prompt
streams piece by piece; several decode together in one batch). Several values at one block are
combined as the minimum-norm delta satisfying all of their constraints (perturbation.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import mlx.core as mx

from conva_mlx.errors import ConvaError
from conva_mlx.models.loading import LoadedModel
from conva_mlx.packs.pack import Pack
from conva_mlx.steering.config import (
    GenOptions,
    SteerConfig,
    Target,
    ica_instruction,
    ica_prefix,
)
from conva_mlx.steering.effects import expected_effects
from conva_mlx.steering.engine import (
    Prefilled,
    PromptBatch,
    check_request,
    continuation_logprobs,
    decode_batch,
    decode_steps,
    gate_decisions,
    resolve_defaults,
    steer_prefill,
    supports_batching,
)
from conva_mlx.steering.reports import ExpectedEffect, GateReport, GenerationResult, LayerReport
from conva_mlx.steering.sampling import RowSampler

Messages = list[dict[str, str]] | str


class Prepared(NamedTuple):
    """A validated request: resolved targets, prompt tokens, where the gate reads."""

    targets: list[Target]
    tokens: mx.array
    gate_index: int  # position of the templated query's last token
    expected: list[ExpectedEffect]  # the calibrated method's expected effect per value
    # cfg.instruct: the prompt with ICA's instruction, used only where the gate opens
    instructed: mx.array | None = None
    instruction: str = ""

    def steered_tokens(self, gate: GateReport) -> mx.array:
        """The tokens the model reads: with the instruction only where the gate opened."""
        return self.instructed if self.instructed is not None and gate.open else self.tokens

    def result(self, text: str, tokens: list[int], gate: GateReport,
               layers: list[LayerReport], cfg: SteerConfig, *, generation_tps: float = 0.0,
               seconds: float = 0.0) -> GenerationResult:
        """The finished reply to this request (generate, generate_batch and the server)."""
        read = self.steered_tokens(gate)
        return GenerationResult(
            text=text, tokens=tokens, gate=gate, layers=layers, method=cfg.method,
            mode=cfg.mode, targets=self.targets, prompt_tokens=int(read.size),
            generation_tps=generation_tps, seconds=seconds, expected=self.expected,
            instruction=self.instruction if read is not self.tokens else "")


@dataclass
class StreamPiece:
    """One piece of a streamed reply, like mlx-lm's GenerationResponse.

    `result` (text, tokens and the steering diagnostics) is set on the last piece only."""

    text: str
    token: int | None  # None for the end-of-sequence token
    finish_reason: str | None  # "stop" (EOS), "length" (max tokens) or None
    gate: GateReport
    result: GenerationResult | None = None


@dataclass
class ScoredPrompt:
    """Log-likelihoods of written continuations of one prompt, and the steering behind them."""

    logliks: list[float]  # sum of log p over each continuation's tokens, in order
    gate: GateReport
    layers: list[LayerReport]  # per steered block (token mode: averaged over positions)


class SteeringSession:
    """Steer one loaded model with one pack. Without a pack only methods none and ica run."""

    def __init__(self, lm: LoadedModel, pack: Pack | None = None) -> None:
        if pack is not None:
            pack.check_model(lm.model_id, lm.fingerprint)
            pack.check()
        self.lm = lm
        self.pack = pack

    # ----- validation -------------------------------------------------------------
    @staticmethod
    def _prefixes(cfg: SteerConfig, targets: list[Target], instructed: bool = False
                  ) -> list[str]:
        """ICA's instruction and the negative prompt, put before the user's text
        (`instructed`: the instruction of cfg.instruct, for rows whose gate opens)."""
        prefixes = []
        if cfg.negative_prompt:
            prefixes += [ica_prefix(t.value, low=True) for t in targets]
        if cfg.method == "ica" or instructed:
            prefixes.append(ica_instruction(targets))
        return prefixes

    def build_prompt(self, messages: list[dict[str, str]], cfg: SteerConfig,
                     targets: list[Target], instructed: bool = False) -> str:
        msgs = [dict(m) for m in messages]
        prefixes = self._prefixes(cfg, targets, instructed)
        if prefixes:
            last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
            msgs[last_user]["content"] = " ".join(prefixes) + " " + msgs[last_user]["content"]
        return self.lm.chat_prompt(msgs)

    def prepare(self, messages: Messages, cfg: SteerConfig, reply_prefix: str = "",
                raw: bool = False) -> Prepared:
        """Validate the settings; return the resolved targets and the prompt's tokens.

        `raw=True` takes `messages` as the whole prompt text (no chat template)."""
        cfg = resolve_defaults(self.pack, cfg)
        if isinstance(messages, str) and not raw:
            messages = [{"role": "user", "content": messages}]
        if isinstance(messages, str):
            if not messages.strip():
                raise ConvaError("the prompt is empty")
        elif not messages or not str(messages[-1].get("content", "")).strip():
            raise ConvaError("the prompt is empty")
        targets = check_request(self.pack, cfg)

        def text(instructed: bool) -> str:
            if isinstance(messages, str):  # raw text
                return " ".join([*self._prefixes(cfg, targets, instructed), messages])
            return self.build_prompt(messages, cfg, targets, instructed)

        prompt = text(False)
        ids = list(self.lm.tokenizer.encode(prompt + reply_prefix))
        if len(ids) < 2:
            raise ConvaError("the prompt is empty")
        self.lm.check_prompt_length(len(ids))
        # The gate was trained on the templated query's last token: read it there, not
        # after a reply prefix such as "Answer:".
        gate_index = len(ids) - 1
        if reply_prefix:
            head = list(self.lm.tokenizer.encode(prompt))
            if ids[:len(head)] == head:
                gate_index = len(head) - 1
        instructed, instruction = None, ""
        if cfg.instruct:
            with_instruction = list(self.lm.tokenizer.encode(text(True) + reply_prefix))
            self.lm.check_prompt_length(len(with_instruction))
            instructed = mx.array(with_instruction)
            instruction = ica_instruction(targets)
        return Prepared(targets, mx.array(ids), gate_index,
                        expected_effects(self.pack, cfg, targets), instructed, instruction)

    def prefill(self, prepared: list[Prepared], cfg: SteerConfig
                 ) -> tuple[PromptBatch, Prefilled]:
        """The engine's gate pass and steering prefill for prepared prompts (same settings).

        With cfg.instruct the gate reads each question as the user wrote it; the rows whose
        gate opens are then prefilled with the instruction before the question."""
        cfg = resolve_defaults(self.pack, cfg)
        batch = PromptBatch(self.lm.model, [p.tokens for p in prepared],
                            [p.gate_index for p in prepared])
        targets = prepared[0].targets
        if not cfg.instruct:
            return batch, steer_prefill(batch, self.pack, cfg, targets)
        cache, gates = gate_decisions(batch, self.pack, cfg)
        if not any(g.open for g in gates):  # no instruction anywhere: keep the plain pass
            return batch, steer_prefill(batch, self.pack, cfg, targets, (cache, gates))
        instructed = PromptBatch(self.lm.model,
                                 [p.steered_tokens(g) for p, g in zip(prepared, gates)])
        return instructed, steer_prefill(instructed, self.pack, cfg, targets, (None, gates))

    def _batchable(self, n: int, cfg: SteerConfig) -> bool:
        return n > 1 and cfg.mode != "token" and supports_batching(self.lm.model)

    # ----- generation -----------------------------------------------------------
    def stream(self, messages: Messages, cfg: SteerConfig,
               opts: GenOptions | None = None) -> Iterator[StreamPiece]:
        """Yield the reply piece by piece (like mlx-lm's `stream_generate`); the last piece
        carries the whole `GenerationResult`. Closing the generator early restores the model."""
        return self._pieces(self.prepare(messages, cfg), cfg, opts or GenOptions(), None)

    def generate(self, messages: Messages, cfg: SteerConfig, opts: GenOptions | None = None,
                 on_text: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> GenerationResult:
        """Generate a reply; stream text pieces to `on_text`; return text and diagnostics.

        `should_stop()` returning True ends the reply early (the result holds what came)."""
        prepared = self.prepare(messages, cfg)
        for piece in self._pieces(prepared, cfg, opts or GenOptions(), should_stop):
            if on_text and piece.text:
                on_text(piece.text)
            if piece.result is not None:
                return piece.result
        raise AssertionError("the reply ended without a result")  # pragma: no cover

    def _pieces(self, prepared: Prepared, cfg: SteerConfig, opts: GenOptions,
                should_stop: Callable[[], bool] | None) -> Iterator[StreamPiece]:
        start = time.perf_counter()
        batch, pre = self.prefill([prepared], cfg)
        gate = pre.gates[0]
        eos = set(self.lm.tokenizer.eos_token_ids)
        detok = self.lm.tokenizer.detokenizer
        detok.reset()
        pieces: list[str] = []
        tokens: list[int] = []
        decode_start = time.perf_counter()
        steps = decode_steps(self.lm.model, batch.tokens[0, -1:], pre.cache, pre.hooks,
                             [RowSampler(opts)], opts.max_tokens)
        try:
            for (t,) in steps:
                finish = None
                if t in eos:
                    finish = "stop"
                else:
                    tokens.append(t)
                    detok.add_token(t)
                    if len(tokens) >= opts.max_tokens:
                        finish = "length"
                if finish is not None:
                    detok.finalize()
                text = detok.last_segment
                pieces.append(text)
                stopped = should_stop is not None and should_stop()
                result = None
                if finish is not None or stopped:
                    reports = pre.row_reports(0)
                    seconds = time.perf_counter() - decode_start
                    result = prepared.result(
                        "".join(pieces), tokens, gate, reports, cfg,
                        generation_tps=len(tokens) / seconds if seconds > 0 else 0.0,
                        seconds=time.perf_counter() - start)
                yield StreamPiece(text, None if finish == "stop" else t, finish, gate, result)
                if result is not None:
                    return
        finally:
            steps.close()  # restores the model when the caller stops early

    def generate_batch(self, prompts: list[str], cfg: SteerConfig,
                       opts: GenOptions | None = None) -> list[GenerationResult]:
        """Replies to several single-turn prompts with the same settings, decoded together.

        Same decisions per prompt as `generate` (gate, minimal delta from its own state);
        token mode and models without plain KV caches run prompt by prompt."""
        opts = opts or GenOptions()
        if not self._batchable(len(prompts), cfg):
            return [self.generate(p, cfg, opts) for p in prompts]
        start = time.perf_counter()
        prepared = [self.prepare(p, cfg) for p in prompts]
        batch, pre = self.prefill(prepared, cfg)
        out = decode_batch(self.lm.model, self.lm.tokenizer, batch, pre.cache, pre.hooks, opts)
        seconds = (time.perf_counter() - start) / batch.size
        return [p.result(self.lm.tokenizer.decode(toks), toks, g, rep, cfg, seconds=seconds)
                for toks, g, rep, p in zip(out, pre.gates, pre.reports, prepared)]

    # ----- scoring ----------------------------------------------------------------
    def next_token_logits(self, messages: Messages, cfg: SteerConfig,
                          reply_prefix: str = "") -> tuple[mx.array, GateReport]:
        """Logits (vocab,) for the next token after the templated prompt + `reply_prefix`.

        For scoring (e.g. MCQs). Same decisions as `generate`: the gate on the unsteered pass,
        then the steered pass (prompt mode: the measuring pass; token mode: per-position
        deltas)."""
        _, pre = self.prefill([self.prepare(messages, cfg, reply_prefix)], cfg)
        return pre.logits[0], pre.gates[0]

    def next_token_logits_batch(self, prompts: list[str], cfg: SteerConfig,
                                reply_prefix: str = "") -> list[tuple[mx.array, GateReport]]:
        """`next_token_logits` for several single-turn prompts, run as one batch."""
        if not self._batchable(len(prompts), cfg):
            return [self.next_token_logits(p, cfg, reply_prefix) for p in prompts]
        _, pre = self.prefill([self.prepare(p, cfg, reply_prefix) for p in prompts], cfg)
        return [(pre.logits[i], g) for i, g in enumerate(pre.gates)]

    def loglik(self, messages: Messages, continuation: str, cfg: SteerConfig) -> float:
        """Log-likelihood of `continuation` as the start of the assistant's reply, under the
        steering decisions `generate` takes (gate on the unsteered prompt; prompt mode's
        delta measured on the prompt, then held; token mode per position; CAA; ICA)."""
        return self.loglik_batch([(messages, [continuation])], cfg)[0].logliks[0]

    def loglik_batch(self, requests: Sequence[tuple[Messages, Sequence[str]]],
                     cfg: SteerConfig) -> list[ScoredPrompt]:
        """`loglik` for several prompts, each with its own candidate continuations; the
        prompts are prefilled once, as one batch, and every continuation is scored on top."""
        if not requests:
            return []
        prepared = [self.prepare(msgs, cfg) for msgs, _ in requests]
        conts = [[self._continuation_ids(c) for c in cs] for _, cs in requests]
        if not self._batchable(len(requests), cfg):
            return [self._score_one(p, c, cfg) for p, c in zip(prepared, conts)]
        batch, pre = self.prefill(prepared, cfg)
        logliks = continuation_logprobs(self.lm.model, batch, pre, conts)
        return [ScoredPrompt(lls, g, rep) for lls, g, rep in zip(logliks, pre.gates, pre.reports)]

    def _continuation_ids(self, text: str) -> list[int]:
        if not text.strip():
            raise ConvaError("a continuation to score is empty")
        return list(self.lm.tokenizer.encode(text, add_special_tokens=False))

    def _score_one(self, prepared: Prepared, conts: list[list[int]],
                   cfg: SteerConfig) -> ScoredPrompt:
        if supports_batching(self.lm.model):
            batch, pre = self.prefill([prepared], cfg)
            lls = continuation_logprobs(self.lm.model, batch, pre, [conts])[0]
        else:  # caches that cannot be repeated: one prefill per continuation
            lls = []
            for c in conts:
                batch, pre = self.prefill([prepared], cfg)
                lls += continuation_logprobs(self.lm.model, batch, pre, [[c]])[0]
        return ScoredPrompt(lls, pre.gates[0], pre.row_reports(0))
