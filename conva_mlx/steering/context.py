"""Steering inside any mlx-lm decode loop: `with steered(lm, pack, "benevolence"): ...`.

The calibrated method (the default) and CAA add fixed vectors, and ConVA's token mode
recomputes the minimal delta at every position's own state, so none of them needs anything
from the loop: install the hooks, run `mlx_lm.generate` / `stream_generate` / your own
loop, and the model is restored on exit. ConVA's prompt mode measures its deltas on the
prompt's last token before decoding, so it needs the prompt (`prompt=`, the exact text or
tokens the loop will be given); so does the gate, which reads the prompt unsteered and
installs no hooks when it stays closed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import mlx.core as mx

from conva_mlx.errors import ConvaError
from conva_mlx.models.layers import hooked_blocks
from conva_mlx.models.loading import LoadedModel
from conva_mlx.packs.pack import Pack
from conva_mlx.steering.config import (
    DEFAULT_METHOD,
    GATED_METHODS,
    Method,
    Mode,
    SteerConfig,
    TargetSpec,
)
from conva_mlx.steering.engine import (
    PACK_METHODS,
    UNGATED,
    PromptBatch,
    check_request,
    plan_push,
    resolve_defaults,
)
from conva_mlx.steering.hooks import TokenStats, reports_so_far
from conva_mlx.steering.reports import GateReport, LayerReport


@dataclass(frozen=True)
class SteeringHandle:
    """What the `steered` block did: the gate's decision and each steered block's change."""

    gate: GateReport
    prompt_reports: list[LayerReport] = field(default_factory=list)  # fixed deltas
    token_stats: TokenStats | None = None  # token mode: updated as positions run

    @property
    def layers(self) -> list[LayerReport]:
        """Per steered block (token mode: averaged over every position run so far)."""
        return reports_so_far(self.token_stats, self.prompt_reports)


def _prompt_tokens(lm: LoadedModel, prompt: str | Sequence[int]) -> mx.array:
    if not isinstance(prompt, str):
        return mx.array(list(prompt))
    # As mlx_lm.generate encodes a string prompt: no second BOS after a templated one.
    bos = lm.tokenizer.bos_token
    add_special = bos is None or not prompt.startswith(bos)
    return mx.array(lm.tokenizer.encode(prompt, add_special_tokens=add_special))


@contextmanager
def steered(lm: LoadedModel, pack: Pack, *targets: TargetSpec,
            method: Method = DEFAULT_METHOD, mode: Mode = "prompt",
            prompt: str | Sequence[int] | None = None, gate: bool | None = None,
            caa_coef: float = 1.0, strength: float | None = None
            ) -> Iterator[SteeringHandle]:
    """Steer `lm.model` toward (or, with Target(..., away=True), away from) the targets
    while the block runs. `gate` defaults to on when a prompt is given, off otherwise;
    `strength` (calibrated) to the pack's default strength.
    The mode matters to ConVA only (the same default as `SteerConfig`: prompt)."""
    if method not in PACK_METHODS:
        raise ConvaError(f"steered() runs {', '.join(PACK_METHODS)} (ica is a prompt "
                         f"prefix: see ica_prefix); got '{method}'")
    use_gate = method in GATED_METHODS and (prompt is not None if gate is None else gate)
    # the instruction is part of the prompt the loop writes: steered() only pushes
    cfg = resolve_defaults(pack, SteerConfig(list(targets), method=method, mode=mode,
                                             gate=use_gate, caa_coef=caa_coef,
                                             strength=strength, instruct=False))
    if not cfg.targets:
        raise ConvaError("steered() needs at least one value, e.g. 'benevolence'")
    pack.check_model(lm.model_id, lm.fingerprint)
    resolved = check_request(pack, cfg)
    if prompt is None and (use_gate or (method == "conva" and mode == "prompt")):
        raise ConvaError("the gate and prompt mode read the prompt: pass prompt=..., or use "
                         "mode='token' with gate=False")
    tokens = _prompt_tokens(lm, prompt) if prompt is not None else None
    decision = UNGATED
    if use_gate:
        assert tokens is not None and pack.gate is not None  # check_request saw the gate
        decision = PromptBatch(lm.model, [tokens]).gate_pass(pack.gate)[1][0]
    push = plan_push(pack, cfg, resolved, [decision])
    if push.measure is not None:  # prompt mode: measure on the prompt, then hold the deltas
        assert tokens is not None
        PromptBatch(lm.model, [tokens]).prefill(push.prefill_hooks())
        push.measured()
    with hooked_blocks(lm.model, push.hooks):
        yield SteeringHandle(decision, push.reports[0], push.stats)
