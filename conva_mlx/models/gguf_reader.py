"""A small, strict GGUF header reader.

It reads metadata and tensor descriptions without touching tensor data, so that a
truncated file, a file that is not GGUF at all, or an unsupported tensor type is reported
with one clear message before anything heavy happens.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from conva_mlx.errors import ConvaError

GGUF_MAGIC = b"GGUF"

# ggml tensor type ids -> (name, elements per block, bytes per block)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
}

SUPPORTED_TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                          "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

# GGUF metadata value types: id -> struct format (None = special handling)
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (outermost first), i.e. GGUF dims reversed
    type_id: int
    offset: int  # absolute file offset of the data

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.type_id, (f"type {self.type_id}", 0, 0))[0]

    @property
    def n_bytes(self) -> int:
        _, block, size = GGML_TYPES[self.type_id]
        n = 1
        for d in self.shape:
            n *= d
        return n // block * size


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_key(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def tensor_type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.type_name] = counts.get(t.type_name, 0) + 1
        return counts


class _Reader:
    def __init__(self, f: BinaryIO, path: Path) -> None:
        self.f = f
        self.path = path

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise ConvaError(f"{self.path}: the GGUF file is truncated (header ends early)")
        return data

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        if n > 1 << 30:
            raise ConvaError(f"{self.path}: corrupt GGUF header (string of {n} bytes)")
        return self.read(n).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALAR_FORMATS:
            return self.scalar(_SCALAR_FORMATS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype = self.scalar("<I")
            count = self.scalar("<Q")
            if count > 1 << 28:
                raise ConvaError(f"{self.path}: corrupt GGUF header (array of {count} items)")
            if itype in _SCALAR_FORMATS:
                fmt = _SCALAR_FORMATS[itype]
                size = struct.calcsize(fmt)
                raw = self.read(size * count)
                return list(struct.unpack(f"<{count}{fmt[1:]}", raw))
            return [self.value(itype) for _ in range(count)]
        raise ConvaError(f"{self.path}: corrupt GGUF header (unknown value type {vtype})")


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Parse a GGUF file's metadata and tensor table; check the data is all there."""
    p = Path(path)
    if not p.is_file():
        raise ConvaError(f"{p}: no such file")
    size = p.stat().st_size
    with open(p, "rb") as f:
        r = _Reader(f, p)
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise ConvaError(f"{p}: not a GGUF file (it starts with {magic!r}, expected b'GGUF')")
        version = r.scalar("<I")
        if version not in (2, 3):
            raise ConvaError(f"{p}: GGUF version {version} is not supported (2 and 3 are)")
        n_tensors = r.scalar("<Q")
        n_kv = r.scalar("<Q")
        if n_tensors > 1 << 20 or n_kv > 1 << 20:
            raise ConvaError(f"{p}: corrupt GGUF header ({n_tensors} tensors, {n_kv} keys)")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            metadata[key] = r.value(r.scalar("<I"))
        raw_infos = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.scalar("<I")
            if n_dims > 8:
                raise ConvaError(f"{p}: corrupt GGUF header (tensor {name} has {n_dims} dims)")
            dims = [r.scalar("<Q") for _ in range(n_dims)]
            type_id = r.scalar("<I")
            offset = r.scalar("<Q")
            raw_infos.append((name, tuple(reversed(dims)), type_id, offset))
        alignment = int(metadata.get("general.alignment", 32))
        pos = f.tell()
        data_start = (pos + alignment - 1) // alignment * alignment
    header = GGUFHeader(path=p, version=version, metadata=metadata)
    for name, shape, type_id, offset in raw_infos:
        info = TensorInfo(name, shape, type_id, data_start + offset)
        header.tensors[name] = info
        if type_id in GGML_TYPES and info.offset + info.n_bytes > size:
            raise ConvaError(
                f"{p}: the GGUF file is truncated (tensor {name} needs bytes up to "
                f"{info.offset + info.n_bytes}, the file has {size})"
            )
    return header


def check_supported_types(header: GGUFHeader) -> None:
    """Raise one clear error if any tensor uses a type we cannot load."""
    bad = sorted({t.type_name for t in header.tensors.values()
                  if t.type_name not in SUPPORTED_TENSOR_TYPES})
    if bad:
        raise ConvaError(
            f"{header.path}: tensor types {', '.join(bad)} are not supported "
            f"(supported: {', '.join(SUPPORTED_TENSOR_TYPES)}; IQ and other types are not: "
            "use a Q4_K_M, Q5_K_M, Q6_K, Q8_0 or F16 file of the model)"
        )
