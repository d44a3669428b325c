"""Value structure analysis and the analyze / extract commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conva_mlx.cli.main import cli
from conva_mlx.packs.analysis import value_structure
from conva_mlx.packs.pack import ModelInfo, Pack, ValueEntry, load_pack
from conva_mlx.packs.save import save_pack
from conva_mlx.probes.linear import ProbeSet
from conva_mlx.values import VALUE_NAMES

LAYERS, HIDDEN = 4, 8


def circumplex_pack(noise: float = 0.05) -> Pack:
    """Value vectors placed on a circle in circumplex order (plus noise)."""
    rng = np.random.default_rng(0)
    values = {}
    for i, name in enumerate(VALUE_NAMES):
        angle = 2 * np.pi * i / len(VALUE_NAMES)
        w = np.zeros((LAYERS, HIDDEN), np.float32)
        w[:, 0], w[:, 1] = np.cos(angle), np.sin(angle)
        w += rng.normal(scale=noise, size=w.shape).astype(np.float32)
        probes = ProbeSet(w, np.zeros(LAYERS, np.float32), np.full(LAYERS, 0.9, np.float32),
                          np.ones(LAYERS, np.float32), w.copy())
        values[name] = ValueEntry(name, probes, [1, 2])
    return Pack(ModelInfo("m", "f", "llama", HIDDEN, LAYERS), values)


def test_circumplex_shaped_vectors_have_similar_neighbours() -> None:
    rep = value_structure(circumplex_pack())
    assert rep.neighbours_more_similar
    assert rep.neighbour_mean > 0.7 and rep.opposite_mean < -0.7
    assert rep.spearman > 0.9
    assert np.allclose(np.diag(rep.cosine), 1.0, atol=1e-6)


def test_random_vectors_show_no_circumplex_structure() -> None:
    rep = value_structure(circumplex_pack(noise=10.0))
    assert abs(rep.spearman) < 0.6


def test_analyze_cli_prints_table_and_writes_heatmap(tmp_path: Path) -> None:
    d = save_pack(circumplex_pack(), tmp_path / "p")
    result = CliRunner().invoke(cli, ["analyze", "--pack", str(d)])
    assert result.exit_code == 0, result.output
    assert "neighbours more similar than opposites: yes" in result.output
    assert (d / "similarity.png").stat().st_size > 10_000
    js = CliRunner().invoke(cli, ["analyze", "--pack", str(d), "--json"])
    assert json.loads(js.output)["neighbours_more_similar"] is True


def test_extract_cli_writes_pack_table_and_plot(tmp_path: Path, default_lm: object) -> None:
    out = tmp_path / "pack"
    result = CliRunner().invoke(cli, ["extract", "--values", "benevolence", "--no-gate",
                                      "--no-uncontrolled", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Probe accuracy by value" in result.output and "benevolence" in result.output
    pack = load_pack(out)
    assert list(pack.values) == ["benevolence"] and pack.gate is None
    assert pack.values["benevolence"].layers
    assert (out / "probe_accuracy.png").stat().st_size > 10_000


def test_extract_cli_rejects_unknown_values(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["extract", "--values", "kindness", "--out",
                                      str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "unknown value 'kindness'" in result.output


def test_strength_sweep_plot_is_a_png(tmp_path: Path) -> None:
    from conva_mlx.plots import plot_strength_sweep

    curves = {"conva-nogate": [{"delta": 0.5, "csr": 0.4, "fr": 1.0, "label": "P0=0.9"},
                               {"delta": 3.0, "csr": 0.6, "fr": 0.9, "label": "P0=0.99"}],
              "caa": [{"delta": 2.0, "csr": 0.5, "fr": 1.0, "label": "x1"}]}
    out = plot_strength_sweep(curves, tmp_path / "sweep.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically


def test_strength_sweep_tool_runs_end_to_end(small_pack_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import runpy
    import sys

    tool = Path(__file__).resolve().parents[1] / "tools" / "strength_sweep.py"
    out = tmp_path / "sweep"
    monkeypatch.setattr(sys, "argv", [
        str(tool), "--pack", str(small_pack_dir), "--out", str(out), "--values", "power",
        "--n", "2", "--p0", "0.9", "--caa", "1", "--max-tokens", "4"])
    runpy.run_path(str(tool), run_name="__main__")
    sweep = json.loads((out / "sweep.json").read_text())
    rows = sweep["rows"]
    assert [(r["method"], r["label"], r["n"]) for r in rows] == [
        ("none", "-", 2), ("conva", "P0=0.9", 2), ("caa", "x1", 2)]
    assert sweep["split"] == "calibration"
    assert rows[0]["delta"] == 0 and rows[2]["delta"] > 0 and 0.0 <= rows[1]["csr"] <= 1.0
    fluent = {r["method"]: r["label"] for r in rows[1:] if r["fr"] >= rows[0]["fr"] - 0.03}
    assert sweep["chosen"] == fluent
    assert (out / "sweep.png").is_file() and "| caa | x1 |" in (out / "sweep.md").read_text()
