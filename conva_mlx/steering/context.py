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
from conva_mlx.models.layers import BlockHook, hooked_blocks
from conva_mlx.models.loading import LoadedModel
from conva_mlx.packs.pack import Pack
from conva_mlx.steering.config import DEFAULT_METHOD, Method, Mode, SteerConfig, TargetSpec
from conva_mlx.steering.engine import (
    FIXED_METHODS,
    GATED_METHODS,
    PACK_METHODS,
    UNGATED,
    PromptBatch,
)
from conva_mlx.steering.hooks import (
    PromptModeMeasure,
    TokenStats,
    add_fixed,
    caa_deltas,
    caa_reports,
    calibrated_deltas,
    check_probes,
    layer_plans,
    resolve_targets,
    token_mode_hooks,
)
from conva_mlx.steering.reports import GateReport, LayerReport


@dataclass
class SteeringHandle:
    """What the `steered` block did: the gate's decision and each steered block's change."""

    gate: GateReport
    _reports: list[LayerReport] = field(default_factory=list)
    _stats: TokenStats | None = None

    @property
    def layers(self) -> list[LayerReport]:
        """Per steered block (token mode: averaged over every position run so far)."""
        return self._stats.reports() if self._stats is not None else self._reports


def _prompt_tokens(lm: LoadedModel, prompt: str | Sequence[int]) -> mx.array:
    if not isinstance(prompt, str):
        return mx.array(list(prompt))
    # As mlx_lm.generate encodes a string prompt: no second BOS after a templated one.
    bos = lm.tokenizer.bos_token
    add_special = bos is None or not prompt.startswith(bos)
    return mx.array(lm.tokenizer.encode(prompt, add_special_tokens=add_special))


@contextmanager
def steered(lm: LoadedModel, pack: Pack, *targets: TargetSpec,
            method: Method = DEFAULT_METHOD, mode: Mode = "token",
            prompt: str | Sequence[int] | None = None, gate: bool | None = None,
            caa_coef: float = 1.0, strength: float = 1.0) -> Iterator[SteeringHandle]:
    """Steer `lm.model` toward (or, with Target(..., away=True), away from) the targets
    while the block runs. `gate` defaults to on when a prompt is given, off otherwise."""
    if method not in PACK_METHODS:
        raise ConvaError(f"steered() runs {', '.join(PACK_METHODS)} (ica is a prompt "
                         f"prefix: see ica_prefix); got '{method}'")
    use_gate = method in GATED_METHODS and (prompt is not None if gate is None else gate)
    cfg = SteerConfig(list(targets), method=method, mode=mode, gate=use_gate,
                      caa_coef=caa_coef, strength=strength)
    if not cfg.targets:
        raise ConvaError("steered() needs at least one value, e.g. 'benevolence'")
    pack.check_model(lm.model_id, lm.fingerprint)
    resolved = resolve_targets(pack, cfg.targets, method)
    if method == "conva":
        check_probes(pack, resolved)
    if prompt is None and (use_gate or (method == "conva" and mode == "prompt")):
        raise ConvaError("the gate and prompt mode read the prompt: pass prompt=..., or use "
                         "mode='token' with gate=False")
    tokens = _prompt_tokens(lm, prompt) if prompt is not None else None
    handle = SteeringHandle(UNGATED)
    if use_gate:
        if pack.gate is None:
            raise ConvaError("this pack has no gate (imported vector?); pass gate=False")
        assert tokens is not None
        handle.gate = PromptBatch(lm.model, [tokens]).gate_pass(pack.gate)[1][0]
    hooks: dict[int, BlockHook] = {}
    if not handle.gate.open:
        pass  # the gate stays closed: the loop runs the plain model
    elif method in FIXED_METHODS:
        deltas = (caa_deltas(pack, cfg, resolved) if method == "caa"
                  else calibrated_deltas(pack, cfg, resolved))
        hooks = {k: add_fixed(d) for k, d in deltas.items()}
        handle._reports = caa_reports(deltas)
    elif mode == "token":
        hooks, handle._stats = token_mode_hooks(layer_plans(pack, cfg, resolved))
    else:  # prompt mode: measure on the prompt, then add the fixed deltas everywhere
        assert tokens is not None
        measure = PromptModeMeasure(layer_plans(pack, cfg, resolved))
        PromptBatch(lm.model, [tokens]).prefill(measure.hooks())
        hooks, handle._reports = measure.generation_hooks(), measure.reports()[0]
    with hooked_blocks(lm.model, hooks):
        yield handle
