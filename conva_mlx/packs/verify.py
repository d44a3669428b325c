"""`pack verify`: check a pack end to end, and bind an old or hand-made pack's tensors.

Binding = a random pack id written both into pack.json and into the safetensors header,
plus the sha256 of vectors.safetensors in pack.json; see `pack.load_pack`.
"""

from __future__ import annotations

import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conva_mlx.errors import ConvaError, ConvaWarning
from conva_mlx.fsutil import atomic_path, atomic_write_json, sha256_file
from conva_mlx.packs.pack import (
    PACK_JSON,
    VECTORS,
    Pack,
    load_pack,
    read_pack_json,
    read_pack_tensors,
)


@dataclass
class VerifyReport:
    pack: Pack
    pack_id: str
    sha256: str
    recorded: bool  # True when --record wrote a missing binding or checksum


def verify_pack(root: str | Path, record: bool = False) -> VerifyReport:
    """Load `root` with every check; with `record`, first add a missing id or checksum.

    `record` never overrides a checksum that is present and wrong: that is corruption.
    """
    root = Path(root)
    meta = read_pack_json(root)
    listed = meta.get("files")
    files: dict[str, str] = listed if isinstance(listed, dict) else {}
    vec_file = root / VECTORS
    recorded = False
    if record and (not meta.get("pack_id") or VECTORS not in files):
        if not vec_file.is_file():
            raise ConvaError(f"{root}: {VECTORS} is missing")
        if VECTORS in files and sha256_file(vec_file) != files[VECTORS]:
            raise ConvaError(f"{vec_file}: checksum does not match {PACK_JSON}; refusing to "
                             "record a new one over a changed or corrupt file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvaWarning)
            load_pack(root, verify_checksums=False)  # every structural check first
        tensors, header = read_pack_tensors(vec_file)
        pack_id = str(meta.get("pack_id") or header.get("pack_id") or uuid.uuid4().hex)
        _write_bound_tensors(vec_file, tensors, {**header, "pack_id": pack_id})
        meta["pack_id"] = pack_id
        meta["files"] = {**files, VECTORS: sha256_file(vec_file)}
        atomic_write_json(root / PACK_JSON, meta)
        recorded = True
    pack = load_pack(root)
    final = read_pack_json(root)
    return VerifyReport(pack, str(final.get("pack_id", "")), str(final["files"][VECTORS]),
                        recorded)


def _write_bound_tensors(vec_file: Path, tensors: dict[str, np.ndarray],
                         header: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    with atomic_path(vec_file) as tmp:
        save_file(tensors, str(tmp), metadata=header)
