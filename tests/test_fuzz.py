"""Property-based fuzzing of the two loaders that read files from strangers.

Mutated real files (a saved pack; GGUF control vectors and model headers written with the
`gguf` package) must either load or raise ConvaError: no other exception may escape.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conva_mlx.errors import ConvaError
from conva_mlx.models.gguf_reader import read_gguf_header
from conva_mlx.packs.pack import load_pack
from conva_mlx.packs.save import save_pack
from conva_mlx.sharing.import_vector import read_control_vector
from tests.test_pack import make_pack

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=6)


@pytest.fixture(scope="module")
def saved_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pack(make_pack(), tmp_path_factory.mktemp("fuzz") / "pack")


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a node of a JSON tree."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _replace(obj: Any, path: tuple[Any, ...], value: Any, delete: bool) -> Any:
    if not path:
        return value
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    if delete and isinstance(parent, dict):
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value
    return obj


def _loads_or_clear_error(folder: Path, verify: bool = True) -> None:
    with warnings.catch_warnings(), contextlib.suppress(ConvaError):
        warnings.simplefilter("ignore")
        load_pack(folder, verify_checksums=verify)


@FUZZ
@given(data=st.data())
def test_mutated_pack_json_loads_or_fails_clearly(saved_pack: Path, data: st.DataObject) -> None:
    meta = json.loads((saved_pack / "pack.json").read_text())
    paths = list(_paths(meta))
    path = data.draw(st.sampled_from(paths), label="path")
    value = data.draw(json_values, label="value")
    delete = data.draw(st.booleans(), label="delete")
    mutated = _replace(meta, path, value, delete)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "p"
        shutil.copytree(saved_pack, folder)
        (folder / "pack.json").write_text(json.dumps(mutated))
        _loads_or_clear_error(folder)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1,
                      max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 10**9)))
def test_mutated_vectors_file_loads_or_fails_clearly(saved_pack: Path,
                                                     flips: list[tuple[int, int]],
                                                     cut: int | None) -> None:
    raw = bytearray((saved_pack / "vectors.safetensors").read_bytes())
    header_end = 8 + int.from_bytes(raw[:8], "little")
    for pos, byte in flips:  # mostly in the header, where the parser lives
        raw[pos % (header_end + 64)] = byte
    if cut is not None:
        raw = raw[: cut % (len(raw) + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "p"
        shutil.copytree(saved_pack, folder)
        (folder / "vectors.safetensors").write_bytes(bytes(raw))
        meta = json.loads((folder / "pack.json").read_text())
        meta["files"]["vectors.safetensors"] = hashlib.sha256(bytes(raw)).hexdigest()
        (folder / "pack.json").write_text(json.dumps(meta))
        _loads_or_clear_error(folder)


def _control_vector(path: Path) -> Path:
    w = gguf.GGUFWriter(str(path), "controlvector")
    w.add_string("controlvector.model_hint", "llama")
    w.add_uint32("controlvector.layer_count", 3)
    w.add_array("conva.layers", [1, 2, 3])
    w.add_string("conva.value", "benevolence")
    for k in (1, 2, 3):
        w.add_tensor(f"direction.{k}", np.full(16, 0.1 * k, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _model_header(path: Path) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 1)
    w.add_uint32("llama.embedding_length", 8)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "<s>", "ab"])
    w.add_token_merges(["a b"])
    w.add_token_types([1, 1, 3, 1])
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(8, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("gguf")
    return {"control": _control_vector(root / "cv.gguf").read_bytes(),
            "model": _model_header(root / "m.gguf").read_bytes()}


@FUZZ
@given(kind=st.sampled_from(["control", "model"]),
       flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 10**9)))
def test_mutated_gguf_header_reads_or_fails_clearly(gguf_files: dict[str, bytes], kind: str,
                                                    flips: list[tuple[int, int]],
                                                    cut: int | None) -> None:
    raw = bytearray(gguf_files[kind])
    for pos, byte in flips:
        raw[pos % len(raw)] = byte
    if cut is not None:
        raw = raw[: cut % (len(raw) + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.gguf"
        path.write_bytes(bytes(raw))
        for reader in (read_gguf_header, read_control_vector):
            with warnings.catch_warnings(), contextlib.suppress(ConvaError):
                warnings.simplefilter("ignore")
                reader(path)


def test_the_unmutated_files_load(saved_pack: Path, gguf_files: dict[str, bytes],
                                  tmp_path: Path) -> None:
    """The fuzz seeds themselves are valid, so the mutations start from real files."""
    assert set(load_pack(saved_pack).values) == {"benevolence", "power"}
    (tmp_path / "cv.gguf").write_bytes(gguf_files["control"])
    assert sorted(read_control_vector(tmp_path / "cv.gguf").directions) == [1, 2, 3]
    (tmp_path / "m.gguf").write_bytes(gguf_files["model"])
    assert read_gguf_header(tmp_path / "m.gguf").architecture == "llama"


# ----- pack fields at their edges: what loads, steering can use -----------------------------

EDGES = [None, True, False, 0, -1, 1, 2, 0.5, 0.4999, 0.9999, 1.0, -0.0, 1e300,
         float("nan"), float("inf"), "", "0.9", "probe", [], [0], [1], [-1], [0, 0], [99],
         [1.5], [0.3, 0.8], ["a"], {}, {"power": 0.9}, {"power": 0.3}, {"power": "x"}]
FIELDS = [("values", "benevolence", "layers"), ("values", "benevolence", "default_p0"),
          ("values", "power", "layers"), ("values", "power", "default_p0"),
          ("values", "power", "fixed_scale"), ("values", "benevolence", "has_uncontrolled"),
          ("recipe", "default_p0"), ("recipe", "p0"), ("recipe", "p0_negative"),
          ("recipe", "block"), ("recipe", "c"), ("recipe", "fit"), ("recipe", "direction"),
          ("recipe", "layers"), ("recipe", "chat_template"), ("recipe", "name"),
          ("gate", "layer"), ("gate", "threshold"), ("gate", "bias"),
          ("model", "num_layers"), ("model", "hidden_size")]
edge_values = st.sampled_from(EDGES) | st.lists(st.sampled_from(EDGES), max_size=3)


def _steering_can_use(pack: Any) -> None:
    """Everything generation reads from a pack, without a model: the checks, each value's
    P0 and plans at every block it steers, a finite minimal delta, the summary."""
    import mlx.core as mx

    from conva_mlx.probes.perturbation import minimal_delta
    from conva_mlx.probes.recipe import check_p0
    from conva_mlx.steering.config import SteerConfig, Target
    from conva_mlx.steering.hooks import caa_deltas, layer_plans, resolve_targets

    pack.check()
    for name, entry in pack.values.items():
        check_p0(pack.recipe.p0_for(name))
        check_p0(pack.recipe.p0_for(name, negative_prompt=True))
        targets = resolve_targets(pack, [Target(name)])
        assert caa_deltas(pack, SteerConfig(targets, method="caa"), targets)
        if entry.fixed_scale is not None:
            continue
        plans = layer_plans(pack, SteerConfig(targets, method="conva"), targets)
        assert plans and [p.index for p in plans] == sorted(entry.layers)
        for plan in plans:
            delta = minimal_delta(mx.zeros((1, pack.model.hidden_size)), plan.cons)
            assert bool(mx.isfinite(delta).all())


@FUZZ
@given(field=st.sampled_from(FIELDS), value=edge_values, delete=st.booleans())
def test_a_pack_that_loads_is_one_steering_can_use(saved_pack: Path, field: tuple[str, ...],
                                                  value: Any, delete: bool) -> None:
    meta = json.loads((saved_pack / "pack.json").read_text())
    mutated = _replace(meta, field, value, delete)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "p"
        shutil.copytree(saved_pack, folder)
        (folder / "pack.json").write_text(json.dumps(mutated))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                pack = load_pack(folder)
            except ConvaError:
                return
        _steering_can_use(pack)


def test_the_edge_table_reaches_both_outcomes(saved_pack: Path) -> None:
    """The edges are edges: some mutations load (and steer), some are refused."""
    loaded = refused = 0
    for field in FIELDS[:2]:
        for value in EDGES:
            meta = _replace(json.loads((saved_pack / "pack.json").read_text()), field, value,
                            False)
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp) / "p"
                shutil.copytree(saved_pack, folder)
                (folder / "pack.json").write_text(json.dumps(meta))
                try:
                    _steering_can_use(load_pack(folder))
                    loaded += 1
                except ConvaError:
                    refused += 1
    assert loaded >= 4 and refused >= 20
