"""Export one value of a pack as PyTorch-loadable tensors (safetensors or a weights-only .pt).

Keys follow the Hugging Face module path of the block whose output is steered (layer k =
output of decoder block k, 0-based = `model.model.layers[k]` = `hidden_states[k + 1]`):

    model.layers.{k}.weight   (hidden,)  raw probe weight w_k
    model.layers.{k}.bias     ()         probe bias b_k
    model.layers.{k}.p0       ()         target probability (the value's default P0)
    gate.weight (hidden,), gate.bias (), gate.threshold (), gate.layer () int64

With these, gated minimal steering is rebuilt exactly: if the gate opens
(sigmoid(gate.weight . e + gate.bias) >= gate.threshold, e = last prompt token at the output
of block gate.layer, unsteered), add eps_k * w_k / |w_k| at block k with
eps_k = max(0, (logit(p0) - b_k - w_k . e_k) / |w_k|). See docs/pytorch.md and
tools/torch_steering.py. The .pt file is `torch.save` of a dict of tensors only, loadable
with `torch.load(path, weights_only=True)`; no pickle of anything else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conva_mlx import __version__
from conva_mlx.errors import ConvaError
from conva_mlx.fsutil import atomic_path
from conva_mlx.models.layers import LAYER_CONVENTION
from conva_mlx.packs.pack import Pack

TENSOR_CONVENTION = f"tensor model.layers.{{k}} steers {LAYER_CONVENTION}"


def torch_tensors(pack: Pack, value: str, p0: float | None = None) -> dict[str, np.ndarray]:
    """The tensors for `value` at its steered layers, plus the gate."""
    entry = pack.value(value)
    if entry.fixed_scale is not None:
        raise ConvaError(f"'{value}' is an imported control vector: it has no probe to export "
                         "for gated minimal steering; export it with --format gguf")
    p0 = entry.default_p0 if p0 is None else p0
    out: dict[str, np.ndarray] = {}
    for k in entry.layers:
        out[f"model.layers.{k}.weight"] = entry.probes.weights[k].astype(np.float32)
        out[f"model.layers.{k}.bias"] = np.array(entry.probes.biases[k], np.float32)
        out[f"model.layers.{k}.p0"] = np.array(p0, np.float32)
    if pack.gate is not None:
        g = pack.gate
        out["gate.weight"] = g.weight.astype(np.float32)
        out["gate.bias"] = np.array(g.bias, np.float32)
        out["gate.threshold"] = np.array(g.threshold, np.float32)
        out["gate.layer"] = np.array(g.layer, np.int64)
    # (np.ascontiguousarray would turn the 0-d scalars into shape (1,))
    return {k: v if v.flags.c_contiguous else v.copy() for k, v in out.items()}


def torch_metadata(pack: Pack, value: str) -> dict[str, str]:
    entry = pack.value(value)
    return {"format": "conva-mlx-torch", "conva.value": value,
            "conva.layers": ",".join(str(k) for k in entry.layers),
            "conva.model_id": pack.model.model_id,
            "conva.model_fingerprint": pack.model.fingerprint,
            "conva.layer_convention": TENSOR_CONVENTION, "conva.tool_version": __version__}


def export_safetensors(pack: Pack, value: str, out: str | Path,
                       p0: float | None = None) -> Path:
    from safetensors.numpy import save_file

    path = Path(out)
    tensors = torch_tensors(pack, value, p0)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=torch_metadata(pack, value))
    return path


def export_torch(pack: Pack, value: str, out: str | Path, p0: float | None = None) -> Path:
    try:
        import torch
    except ImportError as exc:
        raise ConvaError("the torch format needs PyTorch: pip install 'conva-mlx[torch]' "
                         "(or use --format safetensors)") from exc
    path = Path(out)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in torch_tensors(pack, value, p0).items()}
    with atomic_path(path) as tmp:
        torch.save(tensors, str(tmp))
    return path
