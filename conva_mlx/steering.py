"""Gated minimal steering (ConVA) and baselines in one engine over mlx-lm's decode loop.

Per call:
1. An unsteered pass over the prompt fills a KV cache and reads the gate's state.
2. Gate closed (or method none): generation continues from that cache with no hooks, so the
   output is token-for-token the unsteered output.
3. Gate open, mode "prompt": a measuring pass runs blocks in order, each steered block
   computing delta_l from the prompt's last-token state (after earlier blocks' deltas) and
   adding it at every position; its KV cache (trimmed by one token) is handed to mlx-lm's
   `stream_generate`, which keeps adding the fixed deltas at every new position.
   Mode "token": eps is recomputed at every position's state, prompt and generated tokens.
Several values at one layer are combined as the minimum-norm delta satisfying all of their
constraints (see perturbation.py), in the order given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import mlx.core as mx
import numpy as np
from mlx_lm import stream_generate
from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache
from mlx_lm.sample_utils import make_sampler

from .errors import ConvaError
from .layers import BlockHook, hooked_blocks
from .loading import LoadedModel
from .pack import Pack
from .perturbation import HalfSpaces, minimal_delta, probe_probability
from .values import check_value, load_values

Method = Literal["conva", "caa", "ica", "none"]
Mode = Literal["prompt", "token"]
METHODS: tuple[str, ...] = ("conva", "caa", "ica", "none")
MODES: tuple[str, ...] = ("prompt", "token")


@dataclass(frozen=True)
class Target:
    """One value to steer: toward it (P >= p0) or away from it (P <= 1 - p0)."""

    value: str
    p0: float | None = None  # None = the pack's default
    away: bool = False

    @classmethod
    def parse(cls, spec: str, away: bool = False) -> Target:
        """'benevolence' or 'benevolence:0.97'."""
        name, _, p = spec.partition(":")
        check_value(name.strip())
        p0 = None
        if p:
            try:
                p0 = float(p)
            except ValueError as exc:
                raise ConvaError(f"bad strength '{p}' in '{spec}' (use e.g. {name}:0.95)") from exc
            if not 0.5 <= p0 < 1.0:
                raise ConvaError(f"strength P0 must be in [0.5, 1), got {p0}")
        return cls(name.strip(), p0, away)


@dataclass
class SteerConfig:
    targets: list[Target] = field(default_factory=list)
    method: Method = "conva"
    mode: Mode = "prompt"
    gate: bool = True
    probes: Literal["cc", "nocc"] = "cc"  # nocc = the non-context-controlled ablation
    caa_coef: float = 1.0
    negative_prompt: bool = False  # prepend "You have low level of {value}..."
    layers: list[int] | None = None  # override the pack's per-value layers

    def __post_init__(self) -> None:
        toward = {t.value for t in self.targets if not t.away}
        both = sorted(toward & {t.value for t in self.targets if t.away})
        if both:
            raise ConvaError(f"cannot steer both toward and away from {', '.join(both)}")


@dataclass
class GenOptions:
    max_tokens: int = 200
    temp: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConvaError(f"max tokens must be at least 1, got {self.max_tokens}")
        if not self.temp >= 0:  # also refuses NaN
            raise ConvaError(f"temperature must be >= 0, got {self.temp}")
        if not 0 < self.top_p <= 1:
            raise ConvaError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class LayerReport:
    index: int
    p_before: dict[str, float]
    p_after: dict[str, float]
    delta_norm: float
    min_p_after: dict[str, float] = field(default_factory=dict)  # token mode: over tokens

    def as_dict(self, first: str | None) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index, "delta_norm": round(self.delta_norm, 6)}
        if first is not None and first in self.p_before:
            d["p_before"] = round(self.p_before[first], 6)
            d["p_after"] = round(self.p_after[first], 6)
        d["per_value"] = {v: {"p_before": round(self.p_before[v], 6),
                              "p_after": round(self.p_after[v], 6),
                              **({"min_p_after": round(self.min_p_after[v], 6)}
                                 if v in self.min_p_after else {})}
                          for v in self.p_before}
        return d


@dataclass
class GateReport:
    score: float | None
    open: bool
    threshold: float | None
    used: bool


@dataclass
class GenerationResult:
    text: str
    tokens: list[int]
    gate: GateReport
    layers: list[LayerReport]
    method: str
    mode: str
    targets: list[Target]
    prompt_tokens: int = 0
    generation_tps: float = 0.0
    seconds: float = 0.0

    @property
    def steered(self) -> bool:
        return bool(self.layers)

    def as_dict(self) -> dict[str, Any]:
        first = self.targets[0].value if self.targets else None
        return {
            "text": self.text,
            "method": self.method,
            "mode": self.mode,
            "targets": [{"value": t.value, "p0": t.p0, "away": t.away} for t in self.targets],
            "gate": {"score": None if self.gate.score is None else round(self.gate.score, 6),
                     "open": self.gate.open, "threshold": self.gate.threshold,
                     "used": self.gate.used},
            "layers": [r.as_dict(first) for r in self.layers],
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": len(self.tokens),
            "generation_tps": round(self.generation_tps, 2),
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        """One compact diagnostics line (used by the CLI and the chat)."""
        g = self.gate
        gate = ("gate off" if not g.used else
                f"gate {g.score:.2f} {'open' if g.open else 'closed'}" if g.score is not None
                else "gate n/a")
        if not self.layers:
            return f"{gate} · {self.method}: no change"
        norms = [r.delta_norm for r in self.layers]
        parts = []
        for t in self.targets:
            if not any(t.value in r.p_before for r in self.layers):
                parts.append(f"{t.value}{'↓' if t.away else '↑'} fixed vector")
                continue
            before = np.mean([r.p_before.get(t.value, np.nan) for r in self.layers])
            after = np.mean([r.p_after.get(t.value, np.nan) for r in self.layers])
            arrow = "↓" if t.away else "↑"
            parts.append(f"{t.value}{arrow} P {before:.2f}→{after:.2f}")
        return (f"{gate} · {self.method}/{self.mode} · {len(self.layers)} layers · "
                f"|δ| mean {np.mean(norms):.2f} · " + ", ".join(parts))


class Prepared(NamedTuple):
    """A validated request: resolved targets, prompt tokens, where the gate reads."""

    targets: list[Target]
    tokens: mx.array
    gate_index: int  # position of the templated query's last token


@dataclass
class _LayerPlan:
    index: int
    values: list[str]
    weights: mx.array  # (K, hidden) raw probe weights
    biases: mx.array  # (K,)
    cons: HalfSpaces


def ica_prefix(value: str, low: bool = False) -> str:
    v = load_values()[value]
    level = "low" if low else "high"
    return f"You have {level} level of {value}. {v.title} means {v.definition}."


class SteeringSession:
    """Steer one loaded model with one pack."""

    def __init__(self, lm: LoadedModel, pack: Pack) -> None:
        pack.check_model(lm.model_id, lm.fingerprint)
        self.lm = lm
        self.pack = pack

    # ----- planning -------------------------------------------------------------
    def _resolve(self, targets: list[Target]) -> list[Target]:
        out = []
        for t in targets:
            entry = self.pack.value(t.value)
            out.append(Target(t.value, t.p0 if t.p0 is not None else entry.default_p0, t.away))
        return out

    def _plan(self, cfg: SteerConfig, targets: list[Target]) -> list[_LayerPlan]:
        per_layer: dict[int, list[Target]] = {}
        for t in targets:
            entry = self.pack.value(t.value)
            layers = cfg.layers if cfg.layers is not None else entry.layers
            for k in layers:
                per_layer.setdefault(k, []).append(t)
        plans = []
        for k in sorted(per_layer):
            ts = per_layer[k]
            probe_sets = []
            for t in ts:
                entry = self.pack.value(t.value)
                probes = entry.probes
                if cfg.probes == "nocc":
                    if entry.nocc is None:
                        raise ConvaError(f"the pack has no non-context-controlled probes for "
                                         f"{t.value}")
                    probes = entry.nocc
                probe_sets.append(probes)
            w = mx.array(np.stack([p.weights[k] for p in probe_sets]))
            b = mx.array(np.array([p.biases[k] for p in probe_sets], dtype=np.float32))
            cons = HalfSpaces.from_probes(w, b, [float(t.p0 or 0.5) for t in ts],
                                          [t.away for t in ts])
            plans.append(_LayerPlan(k, [t.value for t in ts], w, b, cons))
        return plans

    def _caa_deltas(self, cfg: SteerConfig, targets: list[Target]) -> dict[int, mx.array]:
        deltas: dict[int, mx.array] = {}
        for t in targets:
            entry = self.pack.value(t.value)
            layers = cfg.layers if cfg.layers is not None else entry.layers
            sign = -1.0 if t.away else 1.0
            for k in layers:
                d = mx.array(entry.probes.caa[k]) * (sign * cfg.caa_coef)
                deltas[k] = deltas[k] + d if k in deltas else d
        return deltas

    # ----- prompt text ----------------------------------------------------------
    def build_prompt(self, messages: list[dict[str, str]], cfg: SteerConfig,
                     targets: list[Target]) -> str:
        msgs = [dict(m) for m in messages]
        prefixes = []
        if cfg.negative_prompt:
            prefixes += [ica_prefix(t.value, low=True) for t in targets]
        if cfg.method == "ica":
            prefixes += [ica_prefix(t.value, low=t.away) for t in targets]
        if prefixes:
            last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
            msgs[last_user]["content"] = " ".join(prefixes) + " " + msgs[last_user]["content"]
        return self.lm.chat_prompt(msgs)

    # ----- gate -------------------------------------------------------------------
    def gate_score_from_state(self, state: np.ndarray) -> float:
        assert self.pack.gate is not None
        return float(self.pack.gate.scores(state[None, :])[0])

    def _prefill(self, tokens: mx.array, hooks: dict[int, BlockHook],
                 logits_out: list[mx.array] | None = None) -> list[Any]:
        cache = make_prompt_cache(self.lm.model)
        with hooked_blocks(self.lm.model, hooks):
            logits = self.lm.model(tokens[None], cache=cache)
        if logits_out is not None:
            logits_out.append(logits[0, -1])
        mx.eval([c.state for c in cache])
        trim_prompt_cache(cache, 1)
        return cache

    # ----- shared steps ---------------------------------------------------------
    def _prepare(self, messages: list[dict[str, str]] | str, cfg: SteerConfig,
                 reply_prefix: str = "") -> Prepared:
        """Validate the settings; return the resolved targets and the prompt's tokens."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if not messages or not str(messages[-1].get("content", "")).strip():
            raise ConvaError("the prompt is empty")
        if cfg.method not in METHODS:
            raise ConvaError(f"unknown method '{cfg.method}' (choose from {', '.join(METHODS)})")
        if cfg.mode not in MODES:
            raise ConvaError(f"unknown mode '{cfg.mode}' (choose from {', '.join(MODES)})")
        targets = self._resolve(cfg.targets)
        if cfg.method != "none" and not targets:
            raise ConvaError("choose at least one value to steer (or method none)")
        if cfg.method == "conva" and any(self.pack.value(t.value).fixed_scale is not None
                                         for t in targets):
            raise ConvaError("imported control vectors have no probe; use --method caa")
        if cfg.method == "conva" and cfg.gate and self.pack.gate is None:
            raise ConvaError("this pack has no gate (imported vector?); use --no-gate")
        prompt = self.build_prompt(messages, cfg, targets)
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
        return Prepared(targets, mx.array(ids), gate_index)

    def _gate_pass(self, tokens: mx.array, cfg: SteerConfig,
                   logits_out: list[mx.array] | None = None, gate_index: int = -1
                   ) -> tuple[list[Any] | None, GateReport]:
        """The unsteered prefill that reads the gate (ConVA with the gate on only).

        Returns its KV cache (reusable when the gate stays closed) and the decision.
        """
        gate = self.pack.gate
        if cfg.method != "conva" or not cfg.gate or gate is None:
            return None, GateReport(None, True, None, False)
        state: dict[str, mx.array] = {}

        def read_gate(_k: int, h: mx.array) -> mx.array:
            state["e"] = h[0, gate_index]
            return h

        cache = self._prefill(tokens, {gate.layer: read_gate}, logits_out)
        score = self.gate_score_from_state(np.array(state["e"].astype(mx.float32)))
        return cache, GateReport(score, score >= gate.threshold, gate.threshold, True)

    def _steered_prefill(self, tokens: mx.array, cfg: SteerConfig, targets: list[Target],
                         logits_out: list[mx.array] | None = None
                         ) -> tuple[list[Any], dict[int, BlockHook], list[LayerReport],
                                    _TokenStats | None]:
        """Prefill with steering; returns (cache, generation hooks, reports, token stats)."""
        if cfg.method == "caa":
            deltas = self._caa_deltas(cfg, targets)
            hooks = {k: _add_fixed(d) for k, d in deltas.items()}
            cache = self._prefill(tokens, hooks, logits_out)
            return cache, hooks, [LayerReport(k, {}, {}, _norm(d))
                                  for k, d in sorted(deltas.items())], None
        plans = self._plan(cfg, targets)
        if cfg.mode == "prompt":
            cache, hooks, reports = self._measure_prompt_mode(tokens, plans, logits_out)
            return cache, hooks, reports, None
        hooks, stats = _token_mode_hooks(plans)
        return self._prefill(tokens, hooks, logits_out), hooks, [], stats

    # ----- generation -----------------------------------------------------------
    def generate(
        self,
        messages: list[dict[str, str]] | str,
        cfg: SteerConfig,
        opts: GenOptions | None = None,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Generate a reply; stream text pieces to `on_text`; return text and diagnostics."""
        opts = opts or GenOptions()
        start = time.perf_counter()
        targets, tokens, _ = self._prepare(messages, cfg)
        cache, gate = self._gate_pass(tokens, cfg)
        reports: list[LayerReport] = []
        gen_hooks: dict[int, BlockHook] = {}
        stats: _TokenStats | None = None
        if cfg.method in ("conva", "caa") and gate.open:
            cache, gen_hooks, reports, stats = self._steered_prefill(tokens, cfg, targets)
        elif cache is None:
            cache = self._prefill(tokens, {})

        sampler = make_sampler(temp=opts.temp, top_p=opts.top_p)
        if opts.seed is not None:
            mx.random.seed(opts.seed)
        pieces: list[str] = []
        out_tokens: list[int] = []
        tps = 0.0
        with hooked_blocks(self.lm.model, gen_hooks):
            for resp in stream_generate(self.lm.model, self.lm.tokenizer, tokens[-1:],
                                        max_tokens=opts.max_tokens, sampler=sampler,
                                        prompt_cache=cache):
                if resp.finish_reason != "stop" or resp.text:
                    pieces.append(resp.text)
                    if on_text and resp.text:
                        on_text(resp.text)
                if resp.finish_reason != "stop":
                    out_tokens.append(int(resp.token))
                tps = resp.generation_tps
                if should_stop is not None and should_stop():
                    break
        if stats is not None:
            reports = stats.reports()
        return GenerationResult("".join(pieces), out_tokens, gate, reports, cfg.method,
                                cfg.mode, targets, int(tokens.size), tps,
                                time.perf_counter() - start)

    def generate_batch(self, prompts: list[str], cfg: SteerConfig,
                       opts: GenOptions | None = None) -> list[GenerationResult]:
        """Replies to several single-turn prompts with the same settings, decoded together.

        Same decisions per prompt as `generate` (gate, minimal delta from its own state);
        token mode and models without plain KV caches run prompt by prompt."""
        from .batching import generate_batch, supports_batching

        opts = opts or GenOptions()
        if len(prompts) <= 1 or cfg.mode == "token" or not supports_batching(self.lm.model):
            return [self.generate(p, cfg, opts) for p in prompts]
        return generate_batch(self, prompts, cfg, opts)

    def next_token_logits(self, messages: list[dict[str, str]] | str, cfg: SteerConfig,
                          reply_prefix: str = "") -> tuple[mx.array, GateReport]:
        """Logits (vocab,) for the next token after the templated prompt + `reply_prefix`.

        For scoring (e.g. MCQs). Same decisions as `generate`: the gate on the unsteered pass,
        then the steered pass (prompt mode: the measuring pass; token mode: per-position
        deltas)."""
        targets, tokens, gate_index = self._prepare(messages, cfg, reply_prefix)
        logits: list[mx.array] = []
        cache, gate = self._gate_pass(tokens, cfg, logits, gate_index)
        if cfg.method in ("conva", "caa") and gate.open:
            self._steered_prefill(tokens, cfg, targets, logits)
        elif cache is None:
            self._prefill(tokens, {}, logits)
        return logits[-1], gate

    def next_token_logits_batch(self, prompts: list[str], cfg: SteerConfig,
                                reply_prefix: str = "") -> list[tuple[mx.array, GateReport]]:
        """`next_token_logits` for several single-turn prompts, run as one batch."""
        from .batching import next_token_logits_batch, supports_batching

        if len(prompts) <= 1 or cfg.mode == "token" or not supports_batching(self.lm.model):
            return [self.next_token_logits(p, cfg, reply_prefix) for p in prompts]
        return next_token_logits_batch(self, prompts, cfg, reply_prefix)

    def _measure_prompt_mode(self, tokens: mx.array, plans: list[_LayerPlan],
                             logits_out: list[mx.array] | None = None
                             ) -> tuple[list[Any], dict[int, BlockHook], list[LayerReport]]:
        """One pass, blocks in order: delta_l from the last token, added at all positions."""
        measure = PromptModeMeasure(plans)
        cache = self._prefill(tokens, measure.hooks(), logits_out)
        return cache, measure.generation_hooks(), measure.reports()[0]


class PromptModeMeasure:
    """Prompt mode's measuring pass over a (B, L, hidden) batch (B = 1 for one prompt).

    At each steered block, in order, delta_l comes from each row's last-token state (after
    earlier blocks' deltas) and is added at every position of that row. Rows with
    rows_on == 0 (their gate is closed) get delta 0, so they stay exactly unsteered."""

    def __init__(self, plans: list[_LayerPlan], rows_on: mx.array | None = None) -> None:
        self.plans = plans
        self.rows_on = rows_on
        self.deltas: dict[int, mx.array] = {}  # (B, hidden) per block
        self.before: dict[int, mx.array] = {}  # (B, hidden) per block
        self._by_index = {p.index: p for p in plans}

    def hooks(self) -> dict[int, BlockHook]:
        return {p.index: self._measure for p in self.plans}

    def _measure(self, k: int, h: mx.array) -> mx.array:
        e = h[:, -1]
        d = minimal_delta(e, self._by_index[k].cons)
        if self.rows_on is not None:
            d = d * self.rows_on[:, None].astype(d.dtype)
        self.deltas[k], self.before[k] = d, e
        return h + d[:, None, :]

    def generation_hooks(self) -> dict[int, BlockHook]:
        """Hooks that keep adding each row's measured deltas at new positions."""
        return {k: _add_rows(d) for k, d in self.deltas.items()}

    def reports(self) -> list[list[LayerReport]]:
        """Per row, one report per steered block (none for rows that were not steered)."""
        rows = len(next(iter(self.deltas.values()))) if self.deltas else 0
        on = (np.ones(rows, dtype=bool) if self.rows_on is None
              else np.array(self.rows_on).astype(bool))
        out: list[list[LayerReport]] = [[] for _ in range(rows)]
        for p in self.plans:
            e, d = self.before[p.index], self.deltas[p.index]
            pb = np.array(probe_probability(e, p.weights, p.biases))
            pa = np.array(probe_probability(e + d, p.weights, p.biases))
            norms = np.linalg.norm(np.array(d.astype(mx.float32)), axis=-1)
            for i in np.flatnonzero(on):
                out[i].append(LayerReport(p.index, dict(zip(p.values, pb[i].tolist())),
                                          dict(zip(p.values, pa[i].tolist())),
                                          float(norms[i])))
        return out


def _norm(x: mx.array) -> float:
    return float(np.linalg.norm(np.array(x.astype(mx.float32))))


def _add_rows(delta: mx.array) -> BlockHook:
    """Add a (B, hidden) delta to every position of each row."""
    def hook(_k: int, h: mx.array) -> mx.array:
        return h + delta[:, None, :].astype(h.dtype)
    return hook


def _add_fixed(delta: mx.array) -> BlockHook:
    def hook(_k: int, h: mx.array) -> mx.array:
        return h + delta.astype(h.dtype)
    return hook


class _TokenStats:
    """Running per-layer statistics kept as mx arrays (no host sync per token)."""

    def __init__(self, plans: list[_LayerPlan]) -> None:
        self.plans = {p.index: p for p in plans}
        self.sums: dict[int, list[mx.array]] = {}
        self.mins: dict[int, mx.array] = {}
        self.count: dict[int, int] = {}

    def add(self, k: int, pb: mx.array, pa: mx.array, norms: mx.array) -> None:
        # pb, pa: (positions, K); norms: (positions,)
        stats = [pb.sum(axis=0), pa.sum(axis=0), norms.sum()]
        low = pa.min(axis=0)
        if k in self.sums:
            self.sums[k] = [a + b for a, b in zip(self.sums[k], stats)]
            self.mins[k] = mx.minimum(self.mins[k], low)
        else:
            self.sums[k], self.mins[k] = stats, low
        self.count[k] = self.count.get(k, 0) + int(pb.shape[0])
        mx.async_eval(*self.sums[k], self.mins[k])

    def reports(self) -> list[LayerReport]:
        out = []
        for k in sorted(self.sums):
            p = self.plans[k]
            n = max(1, self.count[k])
            pb, pa, dn = (np.array(x) for x in self.sums[k])
            mins = np.array(self.mins[k])
            out.append(LayerReport(k, {v: float(pb[i] / n) for i, v in enumerate(p.values)},
                                   {v: float(pa[i] / n) for i, v in enumerate(p.values)},
                                   float(dn / n),
                                   {v: float(mins[i]) for i, v in enumerate(p.values)}))
        return out


def _token_mode_hooks(plans: list[_LayerPlan]) -> tuple[dict[int, BlockHook], _TokenStats]:
    """Hooks that recompute the minimal delta at every position's own state."""
    stats = _TokenStats(plans)
    by_index = {p.index: p for p in plans}

    def hook(k: int, h: mx.array) -> mx.array:
        plan = by_index[k]
        d = minimal_delta(h, plan.cons)
        flat_e = h.reshape(-1, h.shape[-1])
        flat_d = d.reshape(-1, d.shape[-1])
        pb = probe_probability(flat_e, plan.weights, plan.biases)
        pa = probe_probability(flat_e + flat_d, plan.weights, plan.biases)
        stats.add(k, pb, pa, mx.linalg.norm(flat_d.astype(mx.float32), axis=-1))
        return h + d

    return {p.index: hook for p in plans}, stats
