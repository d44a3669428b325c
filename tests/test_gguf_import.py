"""GGUF import: exact against a numpy reference, clear errors for bad files."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from conva_mlx.cli.main import cli
from conva_mlx.errors import ConvaError
from conva_mlx.models.gguf_import import import_gguf
from conva_mlx.models.gguf_reader import read_gguf_header
from conva_mlx.models.loading import load_model
from tests.gguf_reference import llama_reference_logits
from tests.tiny_models import ARCHS, export_tiny_gguf

# float32 compute vs a float64 reference over 30 blocks: differences stay at ~1e-3 of
# the logit range; 1e-2 absolute on logits of magnitude ~20 leaves a wide margin while
# any mapping or RoPE mistake produces errors of order 1-10.
LOGIT_ATOL = 1e-2


def test_imported_default_model_matches_numpy_reference(default_gguf: Path,
                                                        tmp_path: Path) -> None:
    out = import_gguf(default_gguf, tmp_path / "smol")
    lm = load_model(str(out), dtype="float32")
    ids = lm.tokenizer.encode("The quick brown fox jumps over the lazy dog.")
    ours = np.array(lm.model(mx.array([ids]))[0].astype(mx.float32))
    ref = llama_reference_logits(default_gguf, ids)
    assert np.abs(ours - ref).max() < LOGIT_ATOL
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("quant", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_tiny_gguf_round_trip_matches_source_model(arch: str, quant: str, tmp_path: Path,
                                                   tiny_model_dirs: dict[str, Path],
                                                   default_gguf: Path) -> None:
    src = tiny_model_dirs[arch]
    gguf_file = export_tiny_gguf(src, tmp_path / f"{arch}.gguf", default_gguf, quant=quant)
    imported = load_model(str(import_gguf(gguf_file, tmp_path / "out")), dtype="float32")
    original = load_model(str(src), dtype="float32")
    ids = mx.array([[5, 17, 300, 42, 9, 1000]])
    a = np.array(original.model(ids))
    b = np.array(imported.model(ids))
    # Random weights amplify rounding through the blocks; tolerances are relative to the
    # logit scale. F32 must be exact up to float32 noise; the exactness of the quantized
    # paths is checked on the real model against the numpy reference above.
    rel = {"F32": 1e-5, "F16": 2e-2, "BF16": 1e-1, "Q8_0": 1e-1}.get(quant, 0.5)
    assert np.abs(a - b).max() < rel * np.abs(a).max()
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > (0.999 if quant == "Q8_0" else 0.9)
    assert imported.architecture == arch


def _write_fake_gguf(path: Path, arch: str, type_id: int) -> None:
    """A minimal GGUF with one 32x32 tensor of the given ggml type id."""
    def s(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()
    body = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)
    body += s("general.architecture") + struct.pack("<I", 8) + s(arch)
    body += s("blk.0.attn_q.weight") + struct.pack("<I", 2) + struct.pack("<QQ", 256, 1)
    body += struct.pack("<IQ", type_id, 0)
    body += b"\0" * (-len(body) % 32) + b"\0" * 4096
    path.write_bytes(body)


def test_iq_quant_file_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """K-quants import now (tests/test_kquants.py); IQ types still do not."""
    f = tmp_path / "iquant.gguf"
    _write_fake_gguf(f, "llama", 20)  # IQ4_NL
    with pytest.raises(ConvaError, match=r"IQ4_NL are not supported \(supported: F32"):
        import_gguf(f, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "gpt2.gguf"
    _write_fake_gguf(f, "gpt2", 0)
    with pytest.raises(ConvaError, match="architecture 'gpt2' is not supported"):
        import_gguf(f, tmp_path / "out")


def test_truncated_gguf_gives_clear_error(default_gguf: Path, tmp_path: Path) -> None:
    f = tmp_path / "cut.gguf"
    with open(default_gguf, "rb") as src:
        f.write_bytes(src.read(50_000_000))
    with pytest.raises(ConvaError, match="truncated"):
        read_gguf_header(f)
    g = tmp_path / "cut_header.gguf"
    with open(default_gguf, "rb") as src:
        g.write_bytes(src.read(1000))
    with pytest.raises(ConvaError, match="truncated"):
        read_gguf_header(g)


def test_cli_reports_non_gguf_file_in_one_line(tmp_path: Path) -> None:
    f = tmp_path / "notes.gguf"
    f.write_text("these are not weights")
    result = CliRunner().invoke(cli, ["models", "import-gguf", str(f), "--out",
                                      str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "not a GGUF file" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_failed_import_leaves_existing_output_untouched(default_model_dir: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "existing"
    shutil.copytree(default_model_dir, out)
    bad = tmp_path / "bad.gguf"
    _write_fake_gguf(bad, "llama", 12)
    with pytest.raises(ConvaError):
        import_gguf(bad, out)
    assert (out / "model.safetensors").is_file()
