"""Export one value of a pack as a llama.cpp control vector (GGUF), readable by repeng too.

Format (what llama.cpp's `--control-vector` and repeng's `ControlVector.import_gguf` read):
`general.architecture = "controlvector"`, `controlvector.model_hint` (the model's
architecture, e.g. "llama"), `controlvector.layer_count` (uint32: the number of direction
tensors written), and one 1-D float32 tensor `direction.k` per steered block, all of the
model's hidden size.

Layer convention: llama.cpp adds `direction.k` to the output of decoder block k (0-based;
the graph code calls `build_cvec(cur, il)` at the end of block il) at every position. That
is the same k as a pack's layer index (= mlx-lm `model.layers[k]` output = Hugging Face
`hidden_states[k + 1]`), so no shift is needed.

Block 0: llama.cpp never holds a vector for block 0 and rejects a whole file that contains
`direction.0` ("invalid (zero) direction tensor layer index"). Block 0 is therefore
**skipped with a warning** and listed in `conva.skipped_layers`. Shifting it to block 1
would add it at a different point of the network, where the probe's guarantee no longer
holds, so it is not done.

Strength: a fixed vector cannot carry the gate or the per-query minimal eps. The exported
direction at block k is `scale_k * w_k / |w_k|`, where `scale_k` is the mean minimal eps at
the value's default P0 over the value's training sentences (positives and negatives of the
context-controlled pairs), each captured without steering:
`eps = max(0, (logit(P0) - b_k - w_k . e) / |w_k|)`. Scales are recorded per layer in
`conva.scale` (same order as `conva.layers`). In llama.cpp, `--control-vector-scaled FILE S`
multiplies them by S. Imported control vectors (packs with `fixed_scale`) are written back
as `fixed_scale * caa`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from conva_mlx import __version__
from conva_mlx.errors import ConvaError
from conva_mlx.fsutil import atomic_path
from conva_mlx.models.layers import LAYER_CONVENTION
from conva_mlx.models.loading import LoadedModel
from conva_mlx.packs.pack import Pack
from conva_mlx.probes.perturbation import eps_np

ARCH = "controlvector"


@dataclass
class GGUFExport:
    """What was written: the path, layers, per-layer scales and skipped layers."""

    path: Path
    layers: list[int]
    scales: dict[int, float]
    skipped: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def mean_eps(lm: LoadedModel, pack: Pack, value: str, p0: float | None = None,
             layers: list[int] | None = None, show_progress: bool = False) -> dict[int, float]:
    """Mean minimal eps per layer at P0 over the value's training sentences (unsteered)."""
    from conva_mlx.data.dataset import ValueData
    from conva_mlx.probes.capture import CaptureOptions, capture

    entry = pack.value(value)
    layers = list(entry.layers if layers is None else layers)
    if not layers:
        return {}
    p0 = entry.default_p0 if p0 is None else p0
    pairs = ValueData().pairs(value)
    texts = [p.positive for p in pairs] + [p.negative for p in pairs]
    # Every block, in the order extraction captures them: the activation cache then hits.
    opts = CaptureOptions(chat_template=bool(pack.capture.get("chat_template", False)))
    states = capture(lm, texts, opts, show_progress=show_progress,
                     description=f"capture {value}")  # (texts, blocks, hidden)
    return {k: float(eps_np(states[:, k], entry.probes.weights[k], entry.probes.biases[k],
                            p0).mean()) for k in layers}


def control_vectors(pack: Pack, value: str, scales: dict[int, float] | None
                    ) -> dict[int, np.ndarray]:
    """The fixed vectors, block index -> (hidden,) float32 (block 0 included)."""
    entry = pack.value(value)
    if entry.fixed_scale is not None:  # imported control vector: write it back as it was
        return {k: (entry.probes.caa[k] * entry.fixed_scale).astype(np.float32)
                for k in entry.layers}
    if scales is None:
        raise ConvaError("a scale per layer is needed to export probe directions")
    missing = [k for k in entry.layers if k not in scales]
    if missing:
        raise ConvaError(f"no scale for layers {missing}")
    dirs = entry.probes.directions
    return {k: (dirs[k] * float(scales[k])).astype(np.float32) for k in entry.layers}


def export_gguf(pack: Pack, value: str, out: str | Path,
                scales: dict[int, float] | None = None, p0: float | None = None) -> GGUFExport:
    """Write `value` as a llama.cpp control vector; block 0 is skipped (see module doc)."""
    import gguf

    entry = pack.value(value)
    vectors = control_vectors(pack, value, scales)
    result = GGUFExport(Path(out), [], {})
    if 0 in vectors:
        result.skipped.append(0)
        result.warnings.append(
            "block 0 is not exported: llama.cpp rejects control vectors with direction.0 "
            "(it never steers block 0)")
        del vectors[0]
    if not vectors:
        steered = "only block 0, which llama.cpp cannot take" if result.skipped else "none"
        raise ConvaError(f"value '{value}' has no steered block to export ({steered}); "
                         "re-extract with other --layers")
    hidden = {v.shape for v in vectors.values()}
    if len(hidden) != 1 or len(next(iter(hidden))) != 1:
        raise ConvaError(f"control vectors must be 1-D and of one length, got {sorted(hidden)}")
    for k, v in vectors.items():
        if not np.isfinite(v).all():
            raise ConvaError(f"the vector for block {k} contains NaN or infinite values")
    layers = sorted(vectors)
    if entry.fixed_scale is not None:
        scale_list = [float(np.linalg.norm(vectors[k])) for k in layers]
        p0 = math.nan
    else:
        assert scales is not None
        scale_list = [float(scales[k]) for k in layers]
        p0 = entry.default_p0 if p0 is None else p0
    path = Path(out)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", pack.model.architecture)
        writer.add_uint32(f"{ARCH}.layer_count", len(layers))
        writer.add_string("conva.value", value)
        if not math.isnan(p0):
            writer.add_float32("conva.p0", float(p0))
        writer.add_array("conva.layers", [int(k) for k in layers])
        writer.add_array("conva.scale", [float(s) for s in scale_list])
        if result.skipped:
            writer.add_array("conva.skipped_layers", result.skipped)
        writer.add_string("conva.scale_rule",
                          "imported control vector, written back unchanged"
                          if entry.fixed_scale is not None else
                          "mean minimal eps at conva.p0 over the value's training sentences")
        writer.add_string("conva.model_id", pack.model.model_id)
        writer.add_string("conva.model_fingerprint", pack.model.fingerprint)
        writer.add_uint32("conva.hidden_size", pack.model.hidden_size)
        writer.add_uint32("conva.num_layers", pack.model.num_layers)
        writer.add_string("conva.layer_convention", LAYER_CONVENTION)
        writer.add_string("conva.tool_version", __version__)
        for k in layers:
            writer.add_tensor(f"direction.{k}", np.ascontiguousarray(vectors[k], np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    result.layers = layers
    result.scales = dict(zip(layers, scale_list))
    return result
