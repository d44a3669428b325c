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

from conva_mlx.errors import ConvaError, warn
from conva_mlx.fsutil import sha256_file
from conva_mlx.packs.calibration import Calibration, find_calibration
from conva_mlx.packs.schema import Fields, check_checksum, check_layers, check_value_name
from conva_mlx.probes.gate import Gate, GateMetrics
from conva_mlx.probes.linear import ProbeSet
from conva_mlx.probes.recipe import LEGACY_RECIPE, Recipe, check_p0

FORMAT_VERSION = 1
PACK_JSON = "pack.json"
VECTORS = "vectors.safetensors"
README = "README.md"
DEFAULT_P0 = 0.95
MAX_PACK_JSON_BYTES = 16 << 20  # a real one is a few KiB (the tensors are elsewhere)


@dataclass
class ValueEntry:
    name: str
    probes: ProbeSet
    layers: list[int]
    default_p0: float = DEFAULT_P0
    selection_note: str = ""
    uncontrolled: ProbeSet | None = None  # probes from the uncontrolled pairs (ablation)
    fixed_scale: float | None = None  # imported control vectors: no probe, fixed strength
    # (layers, hidden): this value's positive sentences against the other values' (at the
    # mean difference's norm per block): the calibrated method's direction. None in packs
    # of one value or made before it existed (the calibrated method then uses `caa`).
    contrast: np.ndarray | None = None


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
    recipe: Recipe = LEGACY_RECIPE  # packs without a recorded recipe were made with it
    # What the calibrated method pushes and what its strengths mean (calibration.json, or
    # the shipped one for this model, dataset and recipe); None = not calibrated.
    calibration: Calibration | None = None
    calibration_source: str = ""

    def check_model(self, model_id: str, fingerprint: str) -> None:
        if fingerprint != self.model.fingerprint:
            raise ConvaError(
                f"this pack was made for model '{self.model.model_id}' (fingerprint "
                f"{self.model.fingerprint}), not for '{model_id}' (fingerprint {fingerprint})")

    def digest(self) -> str:
        """sha256 of everything steering reads (vectors, layers, P0, gate), short hex."""
        h = hashlib.sha256(self.model.fingerprint.encode())
        if self.recipe.direction != "probe":  # the one recipe field steering reads
            h.update(self.recipe.direction.encode())
        for name in sorted(self.values):
            v = self.values[name]
            h.update(json.dumps([name, v.layers, v.default_p0, v.fixed_scale]).encode())
            for probes in (v.probes, v.uncontrolled):
                if probes is not None:
                    for arr in (probes.weights, probes.biases, probes.caa):
                        h.update(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
            if v.contrast is not None:
                h.update(np.ascontiguousarray(v.contrast, dtype=np.float32).tobytes())
        if self.calibration is not None:  # the calibrated method's pushes
            cal = self.calibration
            h.update(json.dumps([{v: c.mix for v, c in sorted(cal.values.items())},
                                 cal.direction, cal.blocks], sort_keys=True).encode())
        if self.gate is not None:
            g = self.gate
            h.update(json.dumps([g.layer, g.bias, g.threshold]).encode())
            h.update(np.ascontiguousarray(g.weight, dtype=np.float32).tobytes())
        return h.hexdigest()[:16]

    def check(self, where: str = "the pack") -> None:
        """The rules steering relies on, for every value: `load_pack` (and so `pack
        verify`), `save_pack` and `SteeringSession` all apply them, so a pack that one
        accepts the others can use."""
        for name, entry in self.values.items():
            check_entry(entry, self.model.num_layers, f"{where} (value {name})")

    def value(self, name: str) -> ValueEntry:
        if name not in self.values:
            raise ConvaError(f"value '{name}' is not in this pack "
                             f"(it has: {', '.join(self.values) or 'none'})")
        return self.values[name]


def check_entry(entry: ValueEntry, num_layers: int, where: str) -> None:
    """One value's steering settings: blocks to steer, its default P0, a fixed scale."""
    check_layers(list(entry.layers), num_layers, where)
    check_p0(entry.default_p0, f"{where}: 'default_p0'")
    scale = entry.fixed_scale
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ConvaError(f"{where}: 'fixed_scale' must be a finite number, got {scale}")


_PROBE_PARTS = ("weight", "bias", "accuracy", "train_accuracy", "caa")


def _load_tensor(t: dict[str, np.ndarray], key: str, where: str, shape: tuple[int, ...]
                 ) -> np.ndarray:
    if key not in t:
        raise ConvaError(f"{where}: tensor {key} is missing")
    arr = t[key]
    if arr.shape != shape:
        raise ConvaError(f"{where}: {key} has shape {arr.shape}, expected {shape}")
    if not np.isfinite(arr).all():
        raise ConvaError(f"{where}: tensor {key} contains NaN or infinite values")
    return arr


def _load_probe(t: dict[str, np.ndarray], prefix: str, where: str, hidden: int,
                n_layers: int) -> ProbeSet:
    missing = [k for k in _PROBE_PARTS if f"{prefix}.{k}" not in t]
    if missing:
        raise ConvaError(f"{where}: tensors {', '.join(prefix + '.' + k for k in missing)} "
                         "are missing")
    shapes = {"weight": (n_layers, hidden), "caa": (n_layers, hidden)}
    for k in _PROBE_PARTS:
        arr = t[f"{prefix}.{k}"]
        want = shapes.get(k, (n_layers,))
        if arr.shape != want:
            raise ConvaError(f"{where}: {prefix}.{k} has shape {arr.shape}, expected {want}")
        if not np.isfinite(arr).all():
            raise ConvaError(f"{where}: tensor {prefix}.{k} contains NaN or infinite values")
    return ProbeSet(t[f"{prefix}.weight"], t[f"{prefix}.bias"], t[f"{prefix}.accuracy"],
                    t[f"{prefix}.train_accuracy"], t[f"{prefix}.caa"])


def read_pack_json(root: Path) -> dict[str, Any]:
    """The parsed pack.json of a pack directory, or one clear error."""
    meta_file = root / PACK_JSON
    if not meta_file.is_file():
        raise ConvaError(f"{root}: not a vector pack (no {PACK_JSON})")
    size = meta_file.stat().st_size
    if size > MAX_PACK_JSON_BYTES:
        raise ConvaError(f"{meta_file}: is {size} bytes; a pack.json is at most "
                         f"{MAX_PACK_JSON_BYTES} (is this the right file?)")
    try:
        meta = json.loads(meta_file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConvaError(f"{meta_file}: not UTF-8 text (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise ConvaError(f"{meta_file}: not valid JSON ({exc.msg} at line {exc.lineno}, "
                         f"column {exc.colno})") from exc
    except RecursionError as exc:
        raise ConvaError(f"{meta_file}: not valid JSON (nested too deeply)") from exc
    except OSError as exc:
        raise ConvaError(f"{meta_file}: cannot read ({exc.strerror})") from exc
    if not isinstance(meta, dict):
        raise ConvaError(f"{meta_file}: expected a JSON object")
    return meta


_MODEL_KEYS = ("model_id", "fingerprint", "architecture", "hidden_size", "num_layers")


def _model_info(meta: Fields) -> ModelInfo:
    m = meta.sub("model")
    m.require(*_MODEL_KEYS)
    return ModelInfo(m.string("model_id"), m.string("fingerprint"), m.string("architecture"),
                     m.integer("hidden_size", 1), m.integer("num_layers", 1))


def read_pack_tensors(vec_file: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and the header metadata of a safetensors file, or one clear error."""
    from safetensors import SafetensorError, safe_open

    with open(vec_file, "rb") as f:
        head = f.read(9)
    # A safetensors file starts with a little-endian u64 header length, then '{'.
    if len(head) < 9 or head[8:9] != b"{":
        raise ConvaError(f"{vec_file}: not a safetensors file (it does not start with a "
                         "safetensors header)")
    try:
        with safe_open(str(vec_file), framework="numpy") as st:
            header_meta = dict(st.metadata() or {})
            tensors = {k: st.get_tensor(k) for k in st.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConvaError(f"{vec_file}: cannot read safetensors file ({exc})") from exc
    return tensors, header_meta


def _check_binding(meta: Fields, header_meta: dict[str, str], model: ModelInfo,
                   vec_file: Path, expected_tensors: set[str],
                   tensors: dict[str, np.ndarray]) -> None:
    """The tensors must be this pack's: same pack id, model and tensor names."""
    pack_id = meta.string("pack_id", "")
    if pack_id and header_meta.get("pack_id") != pack_id:
        raise ConvaError(f"{vec_file}: these tensors belong to another pack (pack id "
                         f"{header_meta.get('pack_id') or 'none'}, pack.json says {pack_id})")
    fp = header_meta.get("model_fingerprint")
    if fp is not None and fp != model.fingerprint:
        raise ConvaError(f"{vec_file}: these tensors were made for model fingerprint {fp}, "
                         f"pack.json says {model.fingerprint}")
    extra = sorted(set(tensors) - expected_tensors)
    if extra:
        raise ConvaError(f"{vec_file}: tensors {', '.join(extra[:4])} are not described by "
                         f"{PACK_JSON} (the tensors file belongs to another pack)")
    if not pack_id:
        warn(f"{meta.where} has no pack_id, so its tensors are checked only by checksum "
             f"and biases; run `conva-mlx pack verify --record {vec_file.parent}` to bind "
             "them")


def _check_recorded_biases(entry: Fields, probes: ProbeSet, where: str, vec_file: Path) -> None:
    recorded = entry.numbers("biases", len(probes.biases))
    if recorded is not None and not np.allclose(recorded, probes.biases, rtol=1e-5,
                                                atol=1e-6):
        raise ConvaError(f"{vec_file}: the probe biases do not match {where} (the tensors "
                         "file belongs to another pack)")


def load_pack(path: str | Path, verify_checksums: bool = True) -> Pack:
    """Load and validate a pack directory; every problem is one clear ConvaError."""
    root = Path(path)
    meta = Fields(read_pack_json(root), str(root / PACK_JSON))
    meta.require("format_version", "model", "values")
    version = meta.integer("format_version", 1)
    if version > FORMAT_VERSION:
        raise ConvaError(f"{meta.where}: pack format {version} is newer than this "
                         f"conva-mlx understands ({FORMAT_VERSION}); upgrade conva-mlx")
    model = _model_info(meta)
    vec_file = root / VECTORS
    if not vec_file.is_file():
        raise ConvaError(f"{root}: {VECTORS} is missing")
    files = Fields(meta.obj.get("files") or {}, f"{meta.where} (files)")
    if verify_checksums:
        if not files.has(VECTORS):
            raise ConvaError(f"{meta.where}: no checksum for {VECTORS} in 'files', so its "
                             "tensors cannot be verified; if you trust this pack, run "
                             f"`conva-mlx pack verify --record {root}`")
        if sha256_file(vec_file) != check_checksum(files, VECTORS):
            raise ConvaError(f"{vec_file}: checksum does not match pack.json (file changed "
                             "or corrupt)")
    tensors, header_meta = read_pack_tensors(vec_file)
    value_meta = meta.sub("values")
    expected: set[str] = set()
    values: dict[str, ValueEntry] = {}
    for name in value_meta.obj:
        where = f"{meta.where} (value {name})"
        check_value_name(name, meta.where)
        v = value_meta.sub(name)
        v.where = where
        v.require("layers", "default_p0")
        probes = _load_probe(tensors, name, str(vec_file), model.hidden_size, model.num_layers)
        _check_recorded_biases(v, probes, where, vec_file)
        # Packs before 0.1.0's rename call the uncontrolled probes "nocc": still read them.
        old_name = not v.has("has_uncontrolled") and v.boolean("has_nocc")
        has_uncontrolled = old_name or v.boolean("has_uncontrolled")
        prefix = f"{name}.nocc" if old_name else f"{name}.uncontrolled"
        uncontrolled = (_load_probe(tensors, prefix, str(vec_file), model.hidden_size,
                                    model.num_layers) if has_uncontrolled else None)
        expected |= {f"{name}.{k}" for k in _PROBE_PARTS}
        if has_uncontrolled:
            expected |= {f"{prefix}.{k}" for k in _PROBE_PARTS}
        fixed = v.number("fixed_scale") if v.has("fixed_scale") else None
        contrast = None
        if v.boolean("has_contrast"):
            contrast = _load_tensor(tensors, f"{name}.contrast", str(vec_file),
                                    (model.num_layers, model.hidden_size))
            expected.add(f"{name}.contrast")
        values[name] = ValueEntry(name, probes, v.layers("layers", model.num_layers),
                                  v.number("default_p0"), v.string("selection", ""),
                                  uncontrolled, fixed, contrast)
        check_entry(values[name], model.num_layers, where)
    gate = None
    if meta.has("gate"):
        g = meta.sub("gate")
        g.require("layer", "bias", "threshold")
        if "gate.weight" not in tensors:
            raise ConvaError(f"{vec_file}: tensor gate.weight is missing")
        weight = tensors["gate.weight"]
        if weight.shape != (model.hidden_size,):
            raise ConvaError(f"{vec_file}: gate.weight has shape {weight.shape}, expected "
                             f"({model.hidden_size},)")
        if not np.isfinite(weight).all():
            raise ConvaError(f"{vec_file}: tensor gate.weight contains NaN or infinite values")
        expected.add("gate.weight")
        m = Fields(g.object("metrics", {}), f"{g.where} (metrics)")
        metrics = GateMetrics(m.number("precision", 0), m.number("recall", 0),
                              m.number("f1", 0), m.number("false_open_rate", 0),
                              int(m.number("n_related", 0)), int(m.number("n_unrelated", 0)))
        layer_f1 = Fields(g.object("layer_f1", {}), f"{g.where} (layer_f1)")
        try:
            scores = {int(k): layer_f1.number(k) for k in layer_f1.obj}
        except ValueError as exc:
            raise ConvaError(f"{layer_f1.where}: keys must be block numbers") from exc
        by_kind = g.object("by_kind", {})  # informational: what the gate did on held-out kinds
        gate = Gate(g.integer("layer", 0, model.num_layers), weight, g.number("bias"),
                    g.number("threshold"), metrics, scores,
                    {str(k): dict(v) for k, v in by_kind.items() if isinstance(v, dict)})
    _check_binding(meta, header_meta, model, vec_file, expected, tensors)
    recipe = (Recipe.from_json(meta.object("recipe"), f"{meta.where} (recipe)")
              if meta.has("recipe") else LEGACY_RECIPE)
    dataset_hash = meta.string("dataset_hash", "")
    calibration, source = find_calibration(root, model.fingerprint, dataset_hash, recipe.name)
    if calibration is not None:
        unknown = sorted(({k for c in calibration.values.values() for k in c.mix}
                          | set(calibration.values)) - set(values))
        bad_blocks = [k for k in calibration.blocks or [] if k >= model.num_layers]
        if bad_blocks:
            raise ConvaError(f"{source}: blocks {bad_blocks} do not exist in this "
                             f"{model.num_layers}-block model")
        if unknown and source.startswith("shipped"):
            calibration, source = None, ""  # made for the full pack; this one has fewer values
        elif unknown:
            raise ConvaError(f"{source}: calibrates values this pack does not have "
                             f"({', '.join(unknown)}); re-run `conva-mlx calibrate`")
    return Pack(model, values, gate, dataset_hash, meta.object("capture", {}),
                meta.object("extra", {}), recipe, calibration, source)


def merge_packs(packs: list[Pack]) -> Pack:
    """One pack offering every value of the packs given (the first pack holding a value
    serves it; the gate comes from the first pack that has one). One pack is served as it
    is; the calibration of several is the first pack's when it covers every value."""
    first = packs[0]
    if len(packs) == 1:
        return first
    values: dict[str, ValueEntry] = {}
    for p in packs:
        if p.model.fingerprint != first.model.fingerprint:
            raise ConvaError(f"the packs were made for different models ({first.model.model_id}"
                             f" and {p.model.model_id})")
        for name, entry in p.values.items():
            values.setdefault(name, entry)
    gate = next((p.gate for p in packs if p.gate is not None), None)
    merged = Pack(first.model, values, gate, first.dataset_hash, first.capture, first.extra,
                  first.recipe)
    cal = first.calibration
    if cal is not None and set(cal.values) >= set(values):
        merged.calibration, merged.calibration_source = cal, first.calibration_source
    return merged
