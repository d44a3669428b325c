"""Import a llama.cpp / repeng control vector (GGUF) as a fixed-strength pack.

A control vector is a fixed direction per block, with no probe: there is no gate and no
minimal eps. The pack stores, for each block k of the file (`direction.k` = added to the
output of decoder block k, 0-based, the pack's own layer convention):
- `caa[k]` = the raw vector (what steering method "caa" adds, times --caa-coef),
- `weights[k]` = the unit direction (for analysis; biases and accuracies are 0),
and `fixed_scale = 1.0`. Steering such a pack works only with method "caa" (or "ica");
asking for "conva" is a clear error.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from conva_mlx.errors import ConvaError
from conva_mlx.fsutil import sha256_file
from conva_mlx.models.gguf_reader import read_gguf_header
from conva_mlx.models.loading import LoadedModel
from conva_mlx.packs.pack import DEFAULT_P0, ModelInfo, Pack, ValueEntry
from conva_mlx.probes.linear import ProbeSet
from conva_mlx.values import check_value

IMPORTED_NOTE = ("imported control vector: no probe, so no gate and no minimal eps; "
                 "it steers with a fixed strength (use --method caa, scale with --caa-coef)")


@dataclass
class ControlVectorFile:
    """The contents of a control-vector GGUF."""

    directions: dict[int, np.ndarray]  # block index -> (hidden,) float32
    model_hint: str
    metadata: dict[str, Any]


def _field_value(reader: Any, key: str) -> Any:
    f = reader.get_field(key)
    if f is None or not len(f.parts):
        return None
    try:
        return f.contents()
    except Exception:  # pragma: no cover - very old gguf versions without contents()
        return bytes(f.parts[-1]).decode("utf-8", errors="replace")


def read_control_vector(path: str | Path) -> ControlVectorFile:
    """Read and validate a control vector with the same rules as repeng and llama.cpp."""
    import gguf

    p = Path(path)
    if not p.is_file():
        raise ConvaError(f"{p}: no such file")
    read_gguf_header(p)  # strict: names a truncated or non-GGUF file plainly
    try:
        reader = gguf.GGUFReader(str(p))
    except (ValueError, OSError, KeyError, IndexError) as exc:
        raise ConvaError(f"{p}: not a readable GGUF file ({exc})") from exc
    arch = _field_value(reader, "general.architecture")
    if arch != "controlvector":
        raise ConvaError(f"{p}: not a control vector (general.architecture is {arch!r}, "
                         "expected 'controlvector')")
    hint = _field_value(reader, "controlvector.model_hint")
    meta: dict[str, Any] = {}
    for key in reader.fields:
        if key.startswith("conva."):
            meta[key] = _field_value(reader, key)
    directions: dict[int, np.ndarray] = {}
    length = None
    for t in reader.tensors:
        if not t.name.startswith("direction."):
            continue
        try:
            k = int(t.name[len("direction."):])
        except ValueError as exc:
            raise ConvaError(f"{p}: bad tensor name {t.name} (expected direction.<block>)"
                             ) from exc
        if k < 0:
            raise ConvaError(f"{p}: bad tensor name {t.name} (negative block index)")
        if t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            raise ConvaError(f"{p}: tensor {t.name} has type {t.tensor_type.name}; control "
                             "vectors are float32")
        data = np.asarray(t.data, dtype=np.float32).reshape(-1)
        if len([d for d in t.shape if d != 1]) > 1:
            raise ConvaError(f"{p}: tensor {t.name} is not 1-D (shape {list(t.shape)})")
        if length is None:
            length = data.size
        elif data.size != length:
            raise ConvaError(f"{p}: tensor {t.name} has {data.size} values, the others {length}")
        if not np.isfinite(data).all():
            raise ConvaError(f"{p}: tensor {t.name} contains NaN or infinite values")
        directions[k] = data.copy()
    if not directions:
        raise ConvaError(f"{p}: no direction.<block> tensors found")
    return ControlVectorFile(directions, str(hint or ""), meta)


def import_vector(path: str | Path, lm: LoadedModel, value: str | None = None) -> Pack:
    """Build a fixed-strength pack for `lm` from a control-vector GGUF."""
    p = Path(path)
    cv = read_control_vector(p)
    name = value or cv.metadata.get("conva.value")
    if not name:
        raise ConvaError(f"{p} does not say which value it is: give --value NAME")
    check_value(str(name))
    name = str(name)
    bad = [k for k in cv.directions if k >= lm.num_layers]
    if bad:
        raise ConvaError(f"{p} has vectors for blocks {bad}, but '{lm.model_id}' has only "
                         f"{lm.num_layers} blocks (0..{lm.num_layers - 1})")
    length = next(iter(cv.directions.values())).size
    if length != lm.hidden_size:
        raise ConvaError(f"{p} has vectors of length {length}, but '{lm.model_id}' has "
                         f"hidden size {lm.hidden_size}: it was made for another model"
                         + (f" ({cv.model_hint})" if cv.model_hint else ""))
    if cv.model_hint and cv.model_hint != lm.architecture:
        warnings.warn(f"{p.name} was made for a '{cv.model_hint}' model; '{lm.model_id}' is "
                      f"'{lm.architecture}'", stacklevel=2)
    fp = cv.metadata.get("conva.model_fingerprint")
    if fp and fp != lm.fingerprint:
        warnings.warn(f"{p.name} was exported from model '{cv.metadata.get('conva.model_id')}' "
                      f"(fingerprint {fp}), not '{lm.model_id}' ({lm.fingerprint})",
                      stacklevel=2)
    n, h = lm.num_layers, lm.hidden_size
    weights = np.zeros((n, h), np.float32)
    caa = np.zeros((n, h), np.float32)
    for k, v in cv.directions.items():
        caa[k] = v
        norm = float(np.linalg.norm(v))
        if norm > 0:
            weights[k] = v / norm
    zeros = np.zeros(n, np.float32)
    probes = ProbeSet(weights, zeros.copy(), zeros.copy(), zeros.copy(), caa)
    entry = ValueEntry(name, probes, sorted(cv.directions), DEFAULT_P0,
                       f"{IMPORTED_NOTE}; from {p.name}", None, 1.0)
    model = ModelInfo(lm.model_id, lm.fingerprint, lm.architecture, lm.hidden_size,
                      lm.num_layers)
    extra = {"imported_from": p.name, "source_sha256": sha256_file(p),
             "model_hint": cv.model_hint, "note": IMPORTED_NOTE,
             "source_metadata": {k: _jsonable(v) for k, v in cv.metadata.items()}}
    return Pack(model, {name: entry}, None, "", {}, extra)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    return v
