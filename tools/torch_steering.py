"""Gated minimal ConVA steering for a transformers model, from `conva-mlx export` tensors.

Needs only torch (and safetensors for .safetensors files). Prompt mode: on the first
forward after `prepare()`, block k's delta is computed from the last prompt token's state
(after the deltas of earlier blocks) and added at every position, then kept for every
generated token. Layer k = output of `model.model.layers[k]` = `hidden_states[k + 1]`.
Batch size 1.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def load_vectors(path: str) -> dict[str, torch.Tensor]:
    """Tensors written by `conva-mlx export --format safetensors|torch`."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    return torch.load(path, weights_only=True)


class ConvaSteering:
    """Forward hooks on the steered blocks; `remove()` (or `with`) takes them off."""

    def __init__(self, model: Any, vectors: dict[str, torch.Tensor],
                 p0: float | None = None, use_gate: bool = True) -> None:
        self.blocks = model.model.layers
        self.model = model
        self.probes: dict[int, tuple[torch.Tensor, float, float]] = {}
        for key, w in vectors.items():
            parts = key.split(".")
            if parts[0] == "model" and parts[-1] == "weight":
                k = int(parts[2])
                target = p0 if p0 is not None else float(vectors[f"model.layers.{k}.p0"])
                self.probes[k] = (w.float(), float(vectors[f"model.layers.{k}.bias"]),
                                  math.log(target / (1 - target)))
        self.gate = None
        if use_gate and "gate.weight" in vectors:
            self.gate = (int(vectors["gate.layer"]), vectors["gate.weight"].float(),
                         float(vectors["gate.bias"]), float(vectors["gate.threshold"]))
        self.deltas: dict[int, torch.Tensor] = {}
        self.active = False
        self.gate_score: float | None = None
        self.handles = [self.blocks[k].register_forward_hook(self._hook(k))
                        for k in sorted(self.probes)]

    def _hook(self, k: int) -> Any:
        def hook(_module: Any, _inputs: Any, output: Any) -> Any:
            if not self.active:
                return output
            h = output[0] if isinstance(output, tuple) else output
            if k not in self.deltas:  # first forward = the prompt: measure at its last token
                w, b, target = self.probes[k]
                e = h[0, -1].float()
                eps = torch.clamp((target - b - w @ e) / w.norm(), min=0.0)
                self.deltas[k] = eps * w / w.norm()
            h = h + self.deltas[k].to(h.dtype)
            return (h, *output[1:]) if isinstance(output, tuple) else h
        return hook

    @torch.no_grad()
    def prepare(self, input_ids: torch.Tensor) -> bool:
        """Call once per prompt, before generating: runs the gate, arms prompt mode."""
        self.deltas = {}
        self.active = False
        self.gate_score = None
        if self.gate is not None:
            layer, w, b, threshold = self.gate
            seen: dict[str, torch.Tensor] = {}

            def read(_m: Any, _i: Any, output: Any) -> None:
                h = output[0] if isinstance(output, tuple) else output
                seen["e"] = h[0, -1].float()

            handle = self.blocks[layer].register_forward_hook(read)
            try:
                self.model(input_ids)
            finally:
                handle.remove()
            self.gate_score = float(torch.sigmoid(w @ seen["e"] + b))
            self.active = self.gate_score >= threshold
        else:
            self.active = True
        return self.active

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def __enter__(self) -> ConvaSteering:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
