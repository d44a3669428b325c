"""Shared fixtures: the real default model and tiny random-weight models."""

from __future__ import annotations

from pathlib import Path

import pytest

from conva_mlx.extraction import ExtractOptions, extract_pack
from conva_mlx.models.default_model import ensure_default_model, find_default_gguf
from conva_mlx.models.loading import LoadedModel, load_model
from conva_mlx.packs.pack import Pack
from conva_mlx.packs.save import save_pack
from tests.tiny_models import ARCHS, make_tiny_model


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    return ensure_default_model()


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    return find_default_gguf()


@pytest.fixture(scope="session")
def default_lm(default_model_dir: Path) -> LoadedModel:
    return load_model("default", dtype="float32")


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory,
                    default_model_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_model(arch, root / arch, default_model_dir) for arch in ARCHS}


@pytest.fixture(scope="session", params=ARCHS)
def tiny_lm(request: pytest.FixtureRequest, tiny_model_dirs: dict[str, Path]) -> LoadedModel:
    return load_model(str(tiny_model_dirs[request.param]), dtype="float32")


@pytest.fixture(scope="session")
def small_pack(default_lm: LoadedModel) -> Pack:
    """A real pack for the default model: benevolence and power, with gate and ablation."""
    return extract_pack(default_lm, ["benevolence", "power"],
                        opts=ExtractOptions(with_uncontrolled=True))


@pytest.fixture(scope="session")
def small_pack_dir(small_pack: Pack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pack(small_pack, tmp_path_factory.mktemp("packs") / "small")


@pytest.fixture(scope="session")
def full_pack_dir(default_lm: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model's pack for all 10 values (the default recipe, no ablation probes),
    saved and so loaded with the calibration conva-mlx ships for it."""
    from conva_mlx.values import VALUE_NAMES

    pack = extract_pack(default_lm, list(VALUE_NAMES), opts=ExtractOptions())
    return save_pack(pack, tmp_path_factory.mktemp("packs") / "full")
