"""Writing a pack: pack.json, vectors.safetensors and the model card, staged beside the
target folder and moved in (pack.json last), so a reader never sees half a pack."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np

from conva_mlx import __version__
from conva_mlx.fsutil import OutputKind, atomic_write_json, sha256_file, staged_output_dir
from conva_mlx.models.layers import LAYER_CONVENTION
from conva_mlx.packs.calibration import CALIBRATION_JSON
from conva_mlx.packs.model_card import render_model_card
from conva_mlx.packs.pack import FORMAT_VERSION, PACK_JSON, README, VECTORS, Pack
from conva_mlx.probes.linear import ProbeSet


def _probe_tensors(prefix: str, p: ProbeSet) -> dict[str, np.ndarray]:
    return {f"{prefix}.weight": p.weights, f"{prefix}.bias": p.biases,
            f"{prefix}.accuracy": p.accuracies, f"{prefix}.train_accuracy": p.train_accuracies,
            f"{prefix}.caa": p.caa}


def _probe_meta(p: ProbeSet) -> dict[str, Any]:
    return {"accuracies": [round(float(a), 4) for a in p.accuracies],
            "biases": [float(b) for b in p.biases],
            "n_train_pairs": p.n_train_pairs, "n_test_pairs": p.n_test_pairs}


def pack_to_json(pack: Pack) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, v in pack.values.items():
        values[name] = {"layers": v.layers, "default_p0": v.default_p0,
                        "selection": v.selection_note, **_probe_meta(v.probes),
                        "has_uncontrolled": v.uncontrolled is not None,
                        "has_contrast": v.contrast is not None}
        if v.fixed_scale is not None:
            values[name]["fixed_scale"] = v.fixed_scale
    gate = None
    if pack.gate is not None:
        g = pack.gate
        gate = {"layer": g.layer, "bias": g.bias, "threshold": g.threshold,
                "metrics": g.metrics.as_dict(),
                "layer_f1": {str(k): round(v, 4) for k, v in g.layer_scores.items()},
                "by_kind": g.by_kind}
    return {
        "format": "conva-mlx-pack", "format_version": FORMAT_VERSION, "tool_version": __version__,
        "layer_convention": LAYER_CONVENTION,
        "model": pack.model.__dict__, "dataset_hash": pack.dataset_hash,
        "capture": pack.capture, "recipe": pack.recipe.to_json(), "values": values,
        "gate": gate, "extra": pack.extra,
    }


# calibration.json is part of a pack: an overwrite without one removes the old one (it
# measured other vectors).
PACK_OUTPUT = OutputKind("vector pack", PACK_JSON,
                         (PACK_JSON, VECTORS, README, "probe_accuracy.png", "similarity.png",
                          CALIBRATION_JSON))


def save_pack(pack: Pack, out_dir: str | Path, readme: str | None = None,
              overwrite: bool = False) -> Path:
    """Write the pack into `out_dir`: staged beside it, then moved in (pack.json last).

    An existing pack at `out_dir` is replaced only with `overwrite` (files that are not
    part of a pack are kept); any other non-empty directory is refused.
    """
    from safetensors.numpy import save_file

    out = Path(out_dir).expanduser()
    pack.check(str(out))
    pack_id = uuid.uuid4().hex  # binds vectors.safetensors to this pack.json
    tensors: dict[str, np.ndarray] = {}
    for name, v in pack.values.items():
        tensors.update(_probe_tensors(name, v.probes))
        if v.uncontrolled is not None:
            tensors.update(_probe_tensors(f"{name}.uncontrolled", v.uncontrolled))
        if v.contrast is not None:
            tensors[f"{name}.contrast"] = v.contrast
    if pack.gate is not None:
        tensors["gate.weight"] = pack.gate.weight
    tensors = {k: np.ascontiguousarray(t, dtype=np.float32) for k, t in tensors.items()}
    with staged_output_dir(out, PACK_OUTPUT, overwrite) as tmp:
        save_file(tensors, str(tmp / VECTORS),
                  metadata={"format": "conva-mlx-pack", "pack_id": pack_id,
                            "model_fingerprint": pack.model.fingerprint})
        (tmp / README).write_text(readme if readme is not None else render_model_card(pack),
                                  encoding="utf-8")
        if pack.calibration is not None and not pack.calibration_source.startswith("shipped"):
            atomic_write_json(tmp / CALIBRATION_JSON, pack.calibration.to_json())
        meta = pack_to_json(pack)
        meta["pack_id"] = pack_id
        meta["files"] = {VECTORS: sha256_file(tmp / VECTORS)}
        atomic_write_json(tmp / PACK_JSON, meta)
    return out
