"""Export (llama.cpp GGUF, safetensors, torch), control-vector import, PyTorch parity."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from conva_mlx.cli.main import cli
from conva_mlx.errors import ConvaError
from conva_mlx.models.loading import LoadedModel
from conva_mlx.packs.pack import ModelInfo, Pack, ValueEntry, load_pack
from conva_mlx.packs.save import save_pack
from conva_mlx.probes.gate import Gate, GateMetrics
from conva_mlx.probes.linear import ProbeSet
from conva_mlx.sharing.export_gguf import export_gguf, mean_eps
from conva_mlx.sharing.export_torch import export_safetensors, export_torch
from conva_mlx.sharing.import_vector import import_vector, read_control_vector

ROOT = Path(__file__).resolve().parents[1]
N_LAYERS, HIDDEN = 8, 16


def make_pack(layers: list[int], n_layers: int = N_LAYERS, hidden: int = HIDDEN,
              model_id: str = "test/model", fingerprint: str = "fp0") -> Pack:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(n_layers, hidden)).astype(np.float32)
    b = rng.normal(size=n_layers).astype(np.float32)
    acc = np.full(n_layers, 0.95, np.float32)
    probes = ProbeSet(w, b, acc, acc, (w * 2).astype(np.float32), 80, 20)
    gate = Gate(3, rng.normal(size=hidden).astype(np.float32), -0.2, 0.6,
                GateMetrics(0.9, 0.9, 0.9, 0.1, 10, 10), {3: 0.9})
    model = ModelInfo(model_id, fingerprint, "llama", hidden, n_layers)
    return Pack(model, {"benevolence": ValueEntry("benevolence", probes, layers, 0.95)}, gate)


def fake_lm(pack: Pack) -> LoadedModel:
    m = pack.model
    return SimpleNamespace(model_id=m.model_id, fingerprint=m.fingerprint,  # type: ignore
                           architecture=m.architecture, hidden_size=m.hidden_size,
                           num_layers=m.num_layers)


# ----- what llama.cpp and repeng accept -------------------------------------------------
def llama_cpp_load(path: Path) -> dict[int, np.ndarray]:
    """The checks of llama.cpp's common_control_vector_load_one, in Python."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out: dict[int, np.ndarray] = {}
    n_embd = -1
    assert reader.tensors, "no direction tensors"
    for t in reader.tensors:
        prefix, _, idx = t.name.partition(".")
        assert prefix == "direction", f"invalid/unparsable direction tensor {t.name}"
        layer = int(idx)
        assert layer > 0, "invalid (zero) direction tensor layer index"
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, "non-F32 direction tensor"
        assert len(t.shape) == 1, "non-1D direction tensor"
        if n_embd == -1:
            n_embd = int(t.n_elements)
        assert t.n_elements == n_embd, "direction tensor does not match previous dimensions"
        out[layer] = np.array(t.data)
    return out


def repeng_import(path: Path) -> tuple[str, dict[int, np.ndarray]]:
    """repeng's ControlVector.import_gguf, in Python (without torch)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    archf = reader.get_field("general.architecture")
    assert archf is not None and str(bytes(archf.parts[-1]), "utf-8") == "controlvector"
    modelf = reader.get_field("controlvector.model_hint")
    assert modelf is not None and len(modelf.parts), "missing controlvector.model_hint"
    hint = str(bytes(modelf.parts[-1]), encoding="utf-8")
    directions = {}
    for t in reader.tensors:
        if not t.name.startswith("direction."):
            continue
        directions[int(t.name.split(".")[1])] = t.data.copy()
    return hint, directions


def test_gguf_export_round_trips_with_the_gguf_reader(tmp_path: Path) -> None:
    import gguf

    pack = make_pack([2, 4, 5])
    scales = {2: 0.5, 4: 1.5, 5: 2.5}
    res = export_gguf(pack, "benevolence", tmp_path / "v.gguf", scales)
    assert res.layers == [2, 4, 5] and not res.skipped and not res.warnings
    reader = gguf.GGUFReader(str(tmp_path / "v.gguf"))
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    lc = reader.get_field("controlvector.layer_count")
    assert lc.types == [gguf.GGUFValueType.UINT32] and lc.contents() == 3
    assert reader.get_field("conva.value").contents() == "benevolence"
    assert reader.get_field("conva.p0").contents() == pytest.approx(0.95)
    assert reader.get_field("conva.layers").contents() == [2, 4, 5]
    assert reader.get_field("conva.scale").contents() == pytest.approx([0.5, 1.5, 2.5])
    assert reader.get_field("conva.model_fingerprint").contents() == "fp0"
    assert reader.get_field("conva.tool_version").contents()
    dirs = pack.values["benevolence"].probes.directions
    for t in reader.tensors:
        k = int(t.name.split(".")[1])
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [HIDDEN]
        np.testing.assert_allclose(t.data, dirs[k] * scales[k], rtol=1e-6)
    llama = llama_cpp_load(tmp_path / "v.gguf")
    hint, rep = repeng_import(tmp_path / "v.gguf")
    assert hint == "llama" and sorted(rep) == sorted(llama) == [2, 4, 5]


def test_block_0_is_skipped_with_a_warning_so_llama_cpp_accepts_the_file(tmp_path: Path
                                                                          ) -> None:
    pack = make_pack([0, 1, 3])
    res = export_gguf(pack, "benevolence", tmp_path / "v.gguf", {0: 1.0, 1: 1.0, 3: 2.0})
    assert res.skipped == [0] and res.layers == [1, 3]
    assert any("direction.0" in w for w in res.warnings)
    assert sorted(llama_cpp_load(tmp_path / "v.gguf")) == [1, 3]  # would fail on direction.0
    assert read_control_vector(tmp_path / "v.gguf").metadata["conva.skipped_layers"] == [0]
    with pytest.raises(ConvaError, match="only block 0"):
        export_gguf(make_pack([0]), "benevolence", tmp_path / "w.gguf", {0: 1.0})


def test_import_of_an_exported_gguf_gives_the_same_directions(tmp_path: Path) -> None:
    pack = make_pack([1, 3, 6])
    scales = {1: 0.7, 3: 1.1, 6: 4.0}
    export_gguf(pack, "benevolence", tmp_path / "v.gguf", scales)
    imported = import_vector(tmp_path / "v.gguf", fake_lm(pack))  # value from conva.value
    entry = imported.values["benevolence"]
    assert entry.layers == [1, 3, 6] and entry.fixed_scale == 1.0 and imported.gate is None
    assert "no probe" in entry.selection_note
    src = pack.values["benevolence"].probes.directions
    for k in entry.layers:
        np.testing.assert_allclose(entry.probes.weights[k], src[k], atol=1e-6)
        np.testing.assert_allclose(entry.probes.caa[k], src[k] * scales[k], rtol=1e-6)
    # saved and loaded as a pack, then exported again: the same vectors come back
    d = save_pack(imported, tmp_path / "imported")
    again = load_pack(d)
    assert again.values["benevolence"].fixed_scale == 1.0
    export_gguf(again, "benevolence", tmp_path / "again.gguf")
    a, b = llama_cpp_load(tmp_path / "v.gguf"), llama_cpp_load(tmp_path / "again.gguf")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6)


def test_import_rejects_vectors_for_another_model(tmp_path: Path) -> None:
    pack = make_pack([1, 2])
    export_gguf(pack, "benevolence", tmp_path / "v.gguf", {1: 1.0, 2: 1.0})
    other = make_pack([1], hidden=HIDDEN * 2)
    with pytest.raises(ConvaError, match="hidden size"):
        import_vector(tmp_path / "v.gguf", fake_lm(other))
    with pytest.raises(ConvaError, match="only 2 blocks"):
        import_vector(tmp_path / "v.gguf", fake_lm(make_pack([1], n_layers=2)))
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ConvaError):
        read_control_vector(tmp_path / "bad.gguf")


def test_import_needs_a_value_name_when_the_file_has_none(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "repeng.gguf"
    writer = gguf.GGUFWriter(str(path), "controlvector")  # as repeng's export_gguf writes
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 2)
    for k in (2, 5):
        writer.add_tensor(f"direction.{k}", np.full(HIDDEN, k, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    lm = fake_lm(make_pack([1]))
    with pytest.raises(ConvaError, match="--value"):
        import_vector(path, lm)
    pack = import_vector(path, lm, "power")
    np.testing.assert_array_equal(pack.values["power"].probes.caa[5], np.full(HIDDEN, 5.0))


def test_torch_export_has_hf_module_keys_and_loads_weights_only(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed (extra 'torch')")
    from safetensors.numpy import load_file

    pack = make_pack([2, 4])
    st = load_file(str(export_safetensors(pack, "benevolence", tmp_path / "v.safetensors")))
    expected = {f"model.layers.{k}.{s}" for k in (2, 4) for s in ("weight", "bias", "p0")}
    expected |= {"gate.weight", "gate.bias", "gate.threshold", "gate.layer"}
    assert set(st) == expected
    np.testing.assert_array_equal(st["model.layers.4.weight"],
                                  pack.values["benevolence"].probes.weights[4])
    assert float(st["model.layers.2.p0"]) == pytest.approx(0.95)
    assert int(st["gate.layer"]) == 3
    pt = torch.load(str(export_torch(pack, "benevolence", tmp_path / "v.pt", p0=0.9)),
                    weights_only=True)
    assert set(pt) == expected and all(isinstance(v, torch.Tensor) for v in pt.values())
    assert float(pt["model.layers.4.p0"]) == pytest.approx(0.9)


def test_export_cli_all_formats_into_a_directory(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="torch is not installed (extra 'torch')")
    d = save_pack(make_pack([0, 2, 5]), tmp_path / "pack")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["export", "--pack", str(d), "--value", "benevolence",
                                   "--format", "all", "--scale", "2.0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "benevolence.gguf", "benevolence.pt", "benevolence.safetensors"]
    assert "block 0 is not exported" in res.output
    vecs = llama_cpp_load(out / "benevolence.gguf")
    assert {k: round(float(np.linalg.norm(v)), 4) for k, v in vecs.items()} == {2: 2.0, 5: 2.0}


def test_imported_pack_refuses_conva_and_steers_with_caa(tmp_path: Path,
                                                         default_lm: LoadedModel) -> None:
    from conva_mlx.steering import GenOptions, SteerConfig, SteeringSession, Target

    src = make_pack([4, 8], n_layers=default_lm.num_layers, hidden=default_lm.hidden_size,
                    model_id=default_lm.model_id, fingerprint=default_lm.fingerprint)
    export_gguf(src, "benevolence", tmp_path / "v.gguf", {4: 1.0, 8: 1.0})
    res = CliRunner().invoke(cli, ["import-vector", str(tmp_path / "v.gguf"),
                                   "--out", str(tmp_path / "pack"), "--dtype", "float32"])
    assert res.exit_code == 0, res.output
    pack = load_pack(tmp_path / "pack")
    assert pack.values["benevolence"].fixed_scale == 1.0
    session = SteeringSession(default_lm, pack)
    with pytest.raises(ConvaError, match="imported control vectors have no probe; "
                                         "use --method caa"):
        session.generate("Hello", SteerConfig([Target("benevolence")],
                                              method="conva"), GenOptions(2))
    out = session.generate("Hello", SteerConfig([Target("benevolence")], method="caa"),
                           GenOptions(2))
    assert [r.index for r in out.layers] == [4, 8]
    assert out.layers[0].delta_norm == pytest.approx(1.0, rel=1e-4)


def test_docs_show_the_torch_steering_module_verbatim() -> None:
    doc = (ROOT / "docs" / "pytorch.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert (ROOT / "tools" / "torch_steering.py").read_text() in blocks


# ----- parity with PyTorch ----------------------------------------------------------------
HIDDEN_RTOL = 1e-4  # max |torch - mlx| over a block's states, relative to max |state|
DELTA_RTOL = 1e-3  # max |delta_torch - delta_mlx| relative to |delta_mlx|
GATE_ATOL = 1e-3


def _torch_steering_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("torch_steering",
                                                  ROOT / "tools" / "torch_steering.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["torch_steering"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def hf_model(default_lm: LoadedModel) -> Any:
    pytest.importorskip("torch", reason="torch is not installed (extra 'torch')")
    pytest.importorskip("transformers", reason="transformers is not installed (extra 'torch')")
    return _transformers_model(default_lm)


def _transformers_model(lm: LoadedModel) -> Any:
    """The MLX model's own (dequantized float32) weights in a transformers LlamaForCausalLM."""
    import mlx.core as mx
    import torch
    from mlx.utils import tree_flatten
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = json.loads((lm.path / "config.json").read_text())
    keys = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "rms_norm_eps", "vocab_size", "rope_theta",
            "max_position_embeddings", "tie_word_embeddings", "head_dim")
    assert not cfg.get("rope_traditional"), "q/k rows are un-permuted on GGUF import"
    model = LlamaForCausalLM(LlamaConfig(**{k: cfg[k] for k in keys if k in cfg}))
    state = {k: torch.from_numpy(np.array(v.astype(mx.float32)))
             for k, v in tree_flatten(lm.model.parameters())}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    return model.float().eval()


def test_exported_vectors_steer_pytorch_like_mlx(tmp_path: Path, default_lm: LoadedModel,
                                                small_pack: Pack, hf_model: Any) -> None:
    import mlx.core as mx
    import torch

    from conva_mlx.models.layers import hooked_blocks
    from conva_mlx.steering import SteerConfig, Target
    from conva_mlx.steering.engine import PromptBatch
    from conva_mlx.steering.hooks import PromptModeMeasure, layer_plans, resolve_targets

    lm, pack, value, p0 = default_lm, small_pack, "benevolence", 0.97
    ts = _torch_steering_module()
    path = export_safetensors(pack, value, tmp_path / "v.safetensors", p0=p0)
    vectors = ts.load_vectors(str(path))
    model = hf_model
    prompt = lm.chat_prompt([{"role": "user", "content":
                              "My neighbour asked me to help her move. Should I?"}])
    ids = list(lm.tokenizer.encode(prompt))
    layers = pack.values[value].layers
    n = lm.num_layers

    # MLX: gate score (unsteered) and prompt-mode steered states at every block
    pack.check_model(lm.model_id, lm.fingerprint)
    cfg = SteerConfig([Target(value, p0)], gate=False, method="conva")
    tokens = mx.array(ids)
    measure = PromptModeMeasure(layer_plans(pack, cfg, resolve_targets(pack, cfg.targets)))
    PromptBatch(lm.model, [tokens]).prefill(measure.hooks())
    fixed = measure.generation_hooks()
    mlx_delta = {k: np.array(fixed[k](k, mx.zeros((1, 1, lm.hidden_size)))[0, 0])
                 for k in layers}
    mlx_states: dict[int, np.ndarray] = {}
    gate_state: dict[int, np.ndarray] = {}

    def record(k: int, h: mx.array) -> mx.array:
        if k in fixed:
            h = fixed[k](k, h)
        mlx_states[k] = np.array(h[0])
        return h

    def read_gate(k: int, h: mx.array) -> mx.array:
        gate_state[k] = np.array(h[0, -1])
        return h

    with hooked_blocks(lm.model, {k: record for k in range(n)}):
        mlx_logits = np.array(lm.model(tokens[None])[0])
    assert pack.gate is not None
    with hooked_blocks(lm.model, {pack.gate.layer: read_gate}):
        lm.model(tokens[None])
    mlx_gate = float(pack.gate.scores(gate_state[pack.gate.layer][None, :])[0])

    # PyTorch: the documented hooks, plus recorders registered after them
    torch_states: dict[int, np.ndarray] = {}
    input_ids = torch.tensor([ids])
    with torch.no_grad(), ts.ConvaSteering(model, vectors) as steering:
        steering.prepare(input_ids)
        assert steering.gate_score == pytest.approx(mlx_gate, abs=GATE_ATOL)
        assert steering.active == (mlx_gate >= pack.gate.threshold)
        steering.active = True  # compare the steered pass whatever the gate said

        def recorder(k: int) -> Any:
            def hook(_m: Any, _i: Any, out: Any) -> None:
                h = out[0] if isinstance(out, tuple) else out
                torch_states[k] = h[0].numpy().copy()
            return hook

        handles = [model.model.layers[k].register_forward_hook(recorder(k)) for k in range(n)]
        try:
            torch_logits = model(input_ids).logits[0].numpy()
        finally:
            for hd in handles:
                hd.remove()
        torch_delta = {k: d.numpy() for k, d in steering.deltas.items()}

    assert sorted(torch_delta) == sorted(layers)
    worst_delta = max(float(np.abs(torch_delta[k] - mlx_delta[k]).max()
                            / max(np.linalg.norm(mlx_delta[k]), 1e-6)) for k in layers)
    assert any(np.linalg.norm(mlx_delta[k]) > 0 for k in layers), "P0 0.97 should steer"
    worst_state = max(float(np.abs(torch_states[k] - mlx_states[k]).max()
                            / np.abs(mlx_states[k]).max()) for k in range(n))
    logit_diff = float(np.abs(torch_logits - mlx_logits).max() / np.abs(mlx_logits).max())
    print(f"parity: max relative state diff {worst_state:.2e}, delta diff {worst_delta:.2e}, "
          f"logit diff {logit_diff:.2e}, gate {mlx_gate:.4f}")
    assert worst_delta <= DELTA_RTOL
    assert worst_state <= HIDDEN_RTOL
    assert logit_diff <= HIDDEN_RTOL
    assert int(torch_logits[-1].argmax()) == int(mlx_logits[-1].argmax())


def test_mean_eps_is_the_documented_formula_on_the_training_sentences(
        default_lm: LoadedModel, small_pack: Pack, tmp_path: Path) -> None:
    from conva_mlx.data.dataset import ValueData
    from conva_mlx.probes.capture import CaptureOptions, capture
    from conva_mlx.probes.perturbation import logit

    entry = small_pack.values["power"]
    k = entry.layers[len(entry.layers) // 2]
    scales = mean_eps(default_lm, small_pack, "power", p0=0.9)
    assert sorted(scales) == sorted(entry.layers)
    assert all(s >= 0 and np.isfinite(s) for s in scales.values())
    pairs = ValueData().pairs("power")
    e = capture(default_lm, [p.positive for p in pairs] + [p.negative for p in pairs],
                CaptureOptions())[:, k]  # the activation cache from extraction
    w, b = entry.probes.weights[k], entry.probes.biases[k]
    expected = np.maximum(0, (logit(0.9) - b - e @ w) / np.linalg.norm(w)).mean()
    assert scales[k] == pytest.approx(float(expected), rel=1e-4)
    res = export_gguf(small_pack, "power", tmp_path / "power.gguf", scales, p0=0.9)
    vecs = llama_cpp_load(res.path)
    for layer, v in vecs.items():
        assert float(np.linalg.norm(v)) == pytest.approx(scales[layer], rel=1e-4, abs=1e-6)


def test_docs_usage_block_runs(tmp_path: Path, default_lm: LoadedModel,
                               small_pack: Pack, hf_model: Any) -> None:
    from transformers import AutoTokenizer

    _torch_steering_module()
    doc = (ROOT / "docs" / "pytorch.md").read_text()
    code = re.search(r"<!-- tested -->\n```python\n(.*?)```", doc, flags=re.S)
    assert code
    ns: dict[str, Any] = {
        "model": hf_model,
        "tokenizer": AutoTokenizer.from_pretrained(str(default_lm.path)),
        "vectors_path": str(export_safetensors(small_pack, "benevolence",
                                               tmp_path / "b.safetensors")),
    }
    exec(compile(code.group(1), "docs/pytorch.md", "exec"), ns)
    assert isinstance(ns["reply"], str) and ns["steering"].gate_score is not None
    assert not ns["model"].model.layers[0]._forward_hooks  # hooks removed after `with`
