"""Vector packs: exact round trip and a clear error for every kind of broken pack."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conva_mlx.errors import ConvaError
from conva_mlx.packs.pack import ModelInfo, Pack, ValueEntry, load_pack
from conva_mlx.packs.save import save_pack
from conva_mlx.probes.gate import Gate, GateMetrics
from conva_mlx.probes.linear import ProbeSet

LAYERS, HIDDEN = 6, 16


def _probes(seed: int) -> ProbeSet:
    rng = np.random.default_rng(seed)
    f = np.float32
    return ProbeSet(rng.normal(size=(LAYERS, HIDDEN)).astype(f), rng.normal(size=LAYERS).astype(f),
                    rng.uniform(0.5, 1, LAYERS).astype(f), rng.uniform(0.5, 1, LAYERS).astype(f),
                    rng.normal(size=(LAYERS, HIDDEN)).astype(f), 80, 20)


def make_pack() -> Pack:
    gate = Gate(2, np.random.default_rng(9).normal(size=HIDDEN).astype(np.float32), -0.25, 0.7,
                GateMetrics(0.9, 0.8, 0.85, 0.05, 30, 110), {1: 0.5, 2: 0.85})
    values = {"benevolence": ValueEntry("benevolence", _probes(1), [1, 2, 3], 0.93, "test",
                                        _probes(2)),
              "power": ValueEntry("power", _probes(3), [0, 2], 0.9, "test", None)}
    return Pack(ModelInfo("test/model", "abc123", "llama", HIDDEN, LAYERS), values, gate,
                "datahash")


def test_pack_round_trip_is_exact(tmp_path: Path) -> None:
    pack = make_pack()
    save_pack(pack, tmp_path / "p")
    back = load_pack(tmp_path / "p")
    assert back.model == pack.model
    for name, v in pack.values.items():
        w = back.values[name]
        assert w.layers == v.layers and w.default_p0 == v.default_p0
        for field in ("weights", "biases", "accuracies", "train_accuracies", "caa"):
            assert np.array_equal(getattr(w.probes, field), getattr(v.probes, field))
        assert (w.uncontrolled is None) == (v.uncontrolled is None)
    assert back.gate is not None and pack.gate is not None
    assert np.array_equal(back.gate.weight, pack.gate.weight)
    assert (back.gate.layer, back.gate.bias, back.gate.threshold) == (2, -0.25, 0.7)
    assert back.gate.metrics == pack.gate.metrics
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "README.md", "pack.json", "vectors.safetensors"]


def test_wrong_model_names_both_models() -> None:
    with pytest.raises(ConvaError, match=r"made for model 'test/model'.*not for 'other/m'"):
        make_pack().check_model("other/m", "fff")


def test_truncated_safetensors_is_refused(tmp_path: Path) -> None:
    d = save_pack(make_pack(), tmp_path / "p")
    data = (d / "vectors.safetensors").read_bytes()
    (d / "vectors.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConvaError, match="checksum does not match"):
        load_pack(d)
    with pytest.raises(ConvaError, match="cannot read safetensors"):
        load_pack(d, verify_checksums=False)


def test_pack_json_with_missing_keys_is_refused(tmp_path: Path) -> None:
    d = save_pack(make_pack(), tmp_path / "p")
    meta = json.loads((d / "pack.json").read_text())
    del meta["model"]["fingerprint"]
    (d / "pack.json").write_text(json.dumps(meta))
    with pytest.raises(ConvaError, match=r"missing key.*fingerprint"):
        load_pack(d)
    (d / "pack.json").write_text("{not json")
    with pytest.raises(ConvaError, match="not valid JSON"):
        load_pack(d)


def test_nan_vectors_are_refused(tmp_path: Path) -> None:
    d = save_pack(make_pack(), tmp_path / "p")
    tensors = load_file(str(d / "vectors.safetensors"))
    tensors["power.weight"][1, 3] = np.nan
    save_file(tensors, str(d / "vectors.safetensors"))
    with pytest.raises(ConvaError, match=r"power\.weight contains NaN"):
        load_pack(d, verify_checksums=False)


def test_missing_pack_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConvaError, match="not a vector pack"):
        load_pack(tmp_path)


def test_packs_written_before_the_rename_still_load(tmp_path: Path) -> None:
    """Old packs call the uncontrolled (ablation) probes 'nocc' (has_nocc, <value>.nocc.*)."""
    from safetensors import safe_open

    from conva_mlx.fsutil import sha256_file

    pack = make_pack()
    root = save_pack(pack, tmp_path / "p")
    vec = root / "vectors.safetensors"
    with safe_open(str(vec), framework="numpy") as f:
        header = dict(f.metadata() or {})
    tensors = {k.replace(".uncontrolled.", ".nocc."): v for k, v in load_file(str(vec)).items()}
    save_file(tensors, str(vec), metadata=header)
    meta = json.loads((root / "pack.json").read_text())
    for entry in meta["values"].values():
        entry["has_nocc"] = entry.pop("has_uncontrolled")
    meta["files"]["vectors.safetensors"] = sha256_file(vec)
    (root / "pack.json").write_text(json.dumps(meta))
    back = load_pack(root)
    old, new = back.values["benevolence"].uncontrolled, pack.values["benevolence"].uncontrolled
    assert old is not None and new is not None and np.array_equal(old.weights, new.weights)
    assert back.values["power"].uncontrolled is None
