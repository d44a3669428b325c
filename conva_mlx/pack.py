"""Vector packs: a directory with pack.json, vectors.safetensors (float32) and README.md.

Layer index k = output of decoder block k, 0-based (= HF hidden_states[k + 1] = llama.cpp
direction.k). Probes for every block are stored; `layers` lists the default steered ones.
No pickle anywhere; every file is written atomically; checksums are recorded in pack.json.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import ConvaError
from .fsutil import atomic_path, atomic_write_json, atomic_write_text, sha256_file
from .gate import Gate, GateMetrics
from .probes import ProbeSet

FORMAT_VERSION = 1
PACK_JSON = "pack.json"
VECTORS = "vectors.safetensors"
README = "README.md"
DEFAULT_P0 = 0.95


@dataclass
class ValueEntry:
    name: str
    probes: ProbeSet
    layers: list[int]
    default_p0: float = DEFAULT_P0
    selection_note: str = ""
    nocc: ProbeSet | None = None  # probes from non-context-controlled data (ablation)
    fixed_scale: float | None = None  # imported control vectors: no probe, fixed strength


@dataclass
class ModelInfo:
    model_id: str
    fingerprint: str
    architecture: str
    hidden_size: int
    num_layers: int


@dataclass
class Pack:
    model: ModelInfo
    values: dict[str, ValueEntry]
    gate: Gate | None = None
    dataset_hash: str = ""
    capture: dict[str, Any] = field(default_factory=lambda: {"reduce": "last",
                                                             "chat_template": False})
    extra: dict[str, Any] = field(default_factory=dict)

    def check_model(self, model_id: str, fingerprint: str) -> None:
        if fingerprint != self.model.fingerprint:
            raise ConvaError(
                f"this pack was made for model '{self.model.model_id}' (fingerprint "
                f"{self.model.fingerprint}), not for '{model_id}' (fingerprint {fingerprint})")

    def digest(self) -> str:
        """sha256 of everything steering reads (vectors, layers, P0, gate), short hex."""
        h = hashlib.sha256(self.model.fingerprint.encode())
        for name in sorted(self.values):
            v = self.values[name]
            h.update(json.dumps([name, v.layers, v.default_p0, v.fixed_scale]).encode())
            for probes in (v.probes, v.nocc):
                if probes is not None:
                    for arr in (probes.weights, probes.biases, probes.caa):
                        h.update(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
        if self.gate is not None:
            g = self.gate
            h.update(json.dumps([g.layer, g.bias, g.threshold]).encode())
            h.update(np.ascontiguousarray(g.weight, dtype=np.float32).tobytes())
        return h.hexdigest()[:16]

    def value(self, name: str) -> ValueEntry:
        if name not in self.values:
            raise ConvaError(f"value '{name}' is not in this pack "
                             f"(it has: {', '.join(self.values) or 'none'})")
        return self.values[name]


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
                        "has_nocc": v.nocc is not None}
        if v.fixed_scale is not None:
            values[name]["fixed_scale"] = v.fixed_scale
    gate = None
    if pack.gate is not None:
        g = pack.gate
        gate = {"layer": g.layer, "bias": g.bias, "threshold": g.threshold,
                "metrics": g.metrics.as_dict(),
                "layer_f1": {str(k): round(v, 4) for k, v in g.layer_scores.items()}}
    return {
        "format": "conva-mlx-pack", "format_version": FORMAT_VERSION, "tool_version": __version__,
        "layer_convention": "k = output of decoder block k (0-based) = HF hidden_states[k+1]",
        "model": pack.model.__dict__, "dataset_hash": pack.dataset_hash,
        "capture": pack.capture, "values": values, "gate": gate, "extra": pack.extra,
    }


def save_pack(pack: Pack, out_dir: str | Path, readme: str | None = None) -> Path:
    """Write the pack atomically, file by file; pack.json (with checksums) is written last."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    for name, v in pack.values.items():
        tensors.update(_probe_tensors(name, v.probes))
        if v.nocc is not None:
            tensors.update(_probe_tensors(f"{name}.nocc", v.nocc))
    if pack.gate is not None:
        tensors["gate.weight"] = pack.gate.weight
    tensors = {k: np.ascontiguousarray(t, dtype=np.float32) for k, t in tensors.items()}
    with atomic_path(out / VECTORS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "conva-mlx-pack"})
    from .model_card import render_model_card

    atomic_write_text(out / README, readme if readme is not None else render_model_card(pack))
    meta = pack_to_json(pack)
    meta["files"] = {VECTORS: sha256_file(out / VECTORS)}
    atomic_write_json(out / PACK_JSON, meta)
    return out


_REQUIRED_KEYS = ("format_version", "model", "values")
_MODEL_KEYS = ("model_id", "fingerprint", "architecture", "hidden_size", "num_layers")


def _require(d: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise ConvaError(f"{where}: missing key(s) {', '.join(missing)}")


def _load_probe(t: dict[str, np.ndarray], prefix: str, where: str, hidden: int,
                n_layers: int) -> ProbeSet:
    keys = ("weight", "bias", "accuracy", "train_accuracy", "caa")
    missing = [k for k in keys if f"{prefix}.{k}" not in t]
    if missing:
        raise ConvaError(f"{where}: tensors {', '.join(prefix + '.' + k for k in missing)} "
                         "are missing")
    for k in keys:
        arr = t[f"{prefix}.{k}"]
        if not np.isfinite(arr).all():
            raise ConvaError(f"{where}: tensor {prefix}.{k} contains NaN or infinite values")
    w = t[f"{prefix}.weight"]
    if w.shape != (n_layers, hidden):
        raise ConvaError(f"{where}: {prefix}.weight has shape {w.shape}, "
                         f"expected ({n_layers}, {hidden})")
    return ProbeSet(w, t[f"{prefix}.bias"], t[f"{prefix}.accuracy"],
                    t[f"{prefix}.train_accuracy"], t[f"{prefix}.caa"])


def read_pack_json(root: Path) -> dict[str, Any]:
    """The parsed pack.json of a pack directory, or one clear error."""
    meta_file = root / PACK_JSON
    if not meta_file.is_file():
        raise ConvaError(f"{root}: not a vector pack (no {PACK_JSON})")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise ConvaError(f"{meta_file}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    if not isinstance(meta, dict):
        raise ConvaError(f"{meta_file}: expected a JSON object")
    return meta


def load_pack(path: str | Path, verify_checksums: bool = True) -> Pack:
    """Load and validate a pack directory; every problem is one clear ConvaError."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    root = Path(path)
    meta = read_pack_json(root)
    where = str(root / PACK_JSON)
    _require(meta, _REQUIRED_KEYS, where)
    if meta["format_version"] > FORMAT_VERSION:
        raise ConvaError(f"{where}: pack format {meta['format_version']} is newer than this "
                         f"conva-mlx understands ({FORMAT_VERSION}); upgrade conva-mlx")
    _require(meta["model"], _MODEL_KEYS, f"{where} (model)")
    vec_file = root / VECTORS
    if not vec_file.is_file():
        raise ConvaError(f"{root}: {VECTORS} is missing")
    expected = meta.get("files", {}).get(VECTORS)
    if verify_checksums and expected and sha256_file(vec_file) != expected:
        raise ConvaError(f"{vec_file}: checksum does not match pack.json (file changed or "
                         "corrupt)")
    try:
        tensors = load_file(str(vec_file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConvaError(f"{vec_file}: cannot read safetensors file ({exc})") from exc
    model = ModelInfo(**{k: meta["model"][k] for k in _MODEL_KEYS})
    values: dict[str, ValueEntry] = {}
    for name, v in meta["values"].items():
        _require(v, ("layers", "default_p0"), f"{where} (value {name})")
        probes = _load_probe(tensors, name, str(vec_file), model.hidden_size, model.num_layers)
        nocc = (_load_probe(tensors, f"{name}.nocc", str(vec_file), model.hidden_size,
                            model.num_layers) if v.get("has_nocc") else None)
        p0 = float(v["default_p0"])
        if not 0 < p0 < 1 or math.isnan(p0):
            raise ConvaError(f"{where}: value {name} has default_p0 {p0}, must be in (0, 1)")
        values[name] = ValueEntry(name, probes, [int(k) for k in v["layers"]], p0,
                                  str(v.get("selection", "")), nocc, v.get("fixed_scale"))
    gate = None
    if meta.get("gate"):
        g = meta["gate"]
        _require(g, ("layer", "bias", "threshold"), f"{where} (gate)")
        if "gate.weight" not in tensors:
            raise ConvaError(f"{vec_file}: tensor gate.weight is missing")
        if not np.isfinite(tensors["gate.weight"]).all():
            raise ConvaError(f"{vec_file}: tensor gate.weight contains NaN or infinite values")
        m = g.get("metrics") or {}
        metrics = GateMetrics(**{k: m.get(k, 0) for k in GateMetrics.__dataclass_fields__})
        gate = Gate(int(g["layer"]), tensors["gate.weight"], float(g["bias"]),
                    float(g["threshold"]), metrics,
                    {int(k): float(x) for k, x in g.get("layer_f1", {}).items()})
    return Pack(model, values, gate, str(meta.get("dataset_hash", "")),
                dict(meta.get("capture", {})), dict(meta.get("extra", {})))
