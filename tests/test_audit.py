"""`conva-mlx audit`: the report of the default model (all 10 values) is complete, its page
shows the numbers of its JSON, loads every image in a real headless browser, and resumes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conva_mlx.evaluation.audit import classical_mds, compare_reports
from conva_mlx.evaluation.audit_page import SECTIONS, Cells, format_value
from conva_mlx.values import VALUE_NAMES

N_PER_VALUE = 1
MCQ_N = 5
DOSE = "calibrated:1,caa:1"


@pytest.fixture(scope="module")
def audit_dir(full_pack_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from click.testing import CliRunner

    from conva_mlx.cli.main import cli

    out = tmp_path_factory.mktemp("audit") / "report"
    res = CliRunner().invoke(cli, ["audit", "--pack", str(full_pack_dir), "--out", str(out),
                                   "--n", str(N_PER_VALUE), "--mcq-n", str(MCQ_N),
                                   "--methods", DOSE])
    assert res.exit_code == 0, res.output
    return out


def _report(out: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[str, str, str]] = []  # (path, fmt, text)
        self.sections: list[str] = []
        self.images = 0
        self._open: tuple[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section" and a.get("id"):
            self.sections.append(str(a["id"]))
        if tag == "img":
            self.images += 1
        if a.get("data-path") is not None:
            self._open = (str(a["data-path"]), str(a["data-fmt"]))
            self.cells.append((*self._open, ""))

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            path, fmt, text = self.cells[-1]
            self.cells[-1] = (path, fmt, text + data)

    def handle_endtag(self, tag: str) -> None:
        self._open = None


def test_the_report_holds_every_figure_with_intervals(audit_dir: Path) -> None:
    report = _report(audit_dir)
    assert report["format"] == "conva-mlx-audit" and report["comparison"] is None
    (m,) = report["models"]
    assert m["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert m["values"] == list(VALUE_NAMES) and m["dilemmas"] == 10 * N_PER_VALUE
    prof = m["profile"]
    assert prof["form"] in ("letter", "likelihood")
    assert prof["form"] == "likelihood"  # 135M: letters read position (pure bias)
    for v in VALUE_NAMES:
        p = prof["values"][v]
        assert p["ci"][0] <= p["favoured"] <= p["ci"][1] and p["n"] == N_PER_VALUE
    assert prof["strongest"] in VALUE_NAMES and prof["strongest"] in prof["sentence"]
    enc = m["encoding"]
    assert len(enc["cosine"]) == 10 and all(len(r) == 10 for r in enc["cosine"])
    assert all(abs(enc["cosine"][i][i] - 1) < 1e-3 for i in range(10))
    assert set(enc["accuracy"]) == set(VALUE_NAMES)
    assert all(len(a) == 30 for a in enc["accuracy"].values())  # SmolLM2: 30 blocks
    assert -1 <= enc["spearman"] <= 1 and set(enc["mds"]) == set(VALUE_NAMES)
    dose = m["dose"]
    # the shipped calibration makes ICA's instruction + the push the default model's default
    assert dose["default"] == "ica+calibrated x1"
    assert dose["settings"] == ["calibrated x1", "caa x1", "ica+calibrated x1"]
    for v in VALUE_NAMES:
        for s in dose["settings"]:
            row = dose["per_value"][v][s]
            assert row["n"] == N_PER_VALUE and row["delta_over_h"] > 0
    assert len(dose["hidden_norm_by_block"]) == 30
    lk = m["leakage"]
    assert lk["setting"] == dose["default"] and list(lk["rows"]) == list(VALUE_NAMES)
    for v, row in lk["rows"].items():
        assert list(row["cells"]) == list(VALUE_NAMES)
        for cell in row["cells"].values():
            assert cell["ci"][0] <= cell["shift"] <= cell["ci"][1]
        # the matrix's diagonal is the dose-response's default point (same scores)
        assert row["target_shift"] == pytest.approx(dose["per_value"][v][dose["default"]]
                                                    ["shift"], abs=1e-3)
    assert 0 <= lk["target_largest_rows"] <= 10 and set(lk["circumplex"]) == set(VALUE_NAMES)
    gate = m["gate"]
    assert gate["present"] and 0 <= gate["held_out"]["precision"] <= 1
    ga = gate["general_ability"]
    assert set(ga) == {"unsteered", "default, gated", "default, no gate"}
    assert all(g["n"] == MCQ_N for g in ga.values())
    assert ga["unsteered"]["gate_open_rate"] is None
    assert ga["default, no gate"]["gate_open_rate"] is None
    assert ga["default, gated"]["gate_open_rate"] is not None


def test_the_page_shows_the_numbers_of_report_json(audit_dir: Path) -> None:
    report = _report(audit_dir)
    page = _Collect()
    page.feed((audit_dir / "report.html").read_text())
    assert page.sections == ["profile", "encoding", "dose", "leakage", "gate"]
    assert len(page.cells) > 100  # every table number is tagged with its JSON path
    cells = Cells(report)
    for path, fmt, text in page.cells:
        assert text == format_value(cells.get(path), fmt), path
    shown = {p for p, _, _ in page.cells}
    for v in VALUE_NAMES:
        assert f"models/0/profile/values/{v}/favoured" in shown
        assert f"models/0/leakage/rows/{v}/selectivity" in shown
    assert "models/0/gate/held_out/precision" in shown
    assert "http://" not in (audit_dir / "report.html").read_text().replace(
        "http://www.w3.org", "")  # self-contained: nothing fetched
    pngs = sorted(p.name for p in audit_dir.glob("*.png"))
    assert page.images == len(pngs) == 8, pngs


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_a_headless_browser_loads_every_image_and_section(audit_dir: Path,
                                                          tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium: tools/test.sh installs Debian's chromium; it could not here")
    page = (audit_dir / "report.html").resolve().as_uri()
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access",
              "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}"]
    # without the OpenBLAS preload the tests run under: it breaks chromium's GPU process
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True,
                         timeout=120, env=env)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = _Collect()
    parsed.feed(dom.stdout)
    assert parsed.sections == ["profile", "encoding", "dose", "leakage", "gate"]
    assert f'data-images-loaded="{parsed.images}/{parsed.images}"' in dom.stdout
    for title in list(SECTIONS.values())[:5]:
        assert title in dom.stdout.replace("&amp;", "&")
    shot = tmp_path / "screenshot.png"
    subprocess.run([*common, "--window-size=1280,3000", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120, check=True, env=env)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_a_second_run_resumes_without_scoring_again(audit_dir: Path,
                                                    full_pack_dir: Path) -> None:
    from click.testing import CliRunner

    from conva_mlx.cli.main import cli

    (scores,) = audit_dir.glob("scores-*/choices.jsonl")
    before = scores.read_text()
    first = _report(audit_dir)
    res = CliRunner().invoke(cli, ["audit", "--pack", str(full_pack_dir), "--out",
                                   str(audit_dir), "--n", str(N_PER_VALUE),
                                   "--mcq-n", str(MCQ_N), "--methods", DOSE])
    assert res.exit_code == 0, res.output
    assert scores.read_text() == before
    assert _report(audit_dir)["models"][0]["leakage"] == first["models"][0]["leakage"]


@pytest.mark.parametrize("args, message", [
    (["--compare-pack", "x"], "--compare-pack needs --compare"),
    (["--quick", "--n", "3"], "--quick and --n"),
    (["--n", "0"], "--n must be at least 1"),
    (["--methods", "none"], "at least one steering method"),
])
def test_bad_options_fail_with_one_clear_line(args: list[str], message: str,
                                              tmp_path: Path) -> None:
    from click.testing import CliRunner

    from conva_mlx.cli.main import cli

    res = CliRunner().invoke(cli, ["audit", "--out", str(tmp_path / "a"), *args])
    assert res.exit_code != 0 and message in res.output
    assert not (tmp_path / "a").exists()


def test_a_users_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from conva_mlx.cli.main import cli

    (tmp_path / "notes.txt").write_text("mine")
    res = CliRunner().invoke(cli, ["audit", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "is not empty" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_classical_mds_recovers_points_on_a_circle() -> None:
    angles = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    pts = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    got = classical_mds(dist)
    assert np.allclose(np.linalg.norm(got[:, None] - got[None], axis=-1), dist, atol=1e-6)


def test_compare_names_only_differences_outside_both_intervals() -> None:
    def model(name: str, fav: float, ci: list[float], shift: float, sci: list[float]
              ) -> dict[str, Any]:
        return {"model": name, "values": ["power"],
                "profile": {"form": "likelihood",
                            "values": {"power": {"favoured": fav, "ci": ci}}},
                "leakage": {"selectivity": 1.0,
                            "rows": {"power": {"target_shift": shift,
                                               "cells": {"power": {"ci": sci}}}}},
                "encoding": {"spearman": 0.1}}

    a = model("a", 0.2, [0.1, 0.3], 1.0, [0.5, 1.5])
    apart = compare_reports(a, model("b", 0.8, [0.7, 0.9], 1.2, [0.8, 1.6]))
    assert [d["value"] for d in apart["profile_differences"]] == ["power"]
    assert apart["own_shift_differences"] == []  # intervals overlap
    close = compare_reports(a, model("b", 0.35, [0.25, 0.45], 3.0, [2.0, 4.0]))
    assert close["profile_differences"] == []
    assert [d["value"] for d in close["own_shift_differences"]] == ["power"]


def test_compare_puts_two_models_side_by_side(audit_dir: Path, full_pack_dir: Path) -> None:
    """The default model against itself (its scores are already stored): two columns, a
    compare section, and no difference outside the intervals."""
    from click.testing import CliRunner

    from conva_mlx.cli.main import cli

    res = CliRunner().invoke(cli, ["audit", "--pack", str(full_pack_dir), "--out",
                                   str(audit_dir), "--n", str(N_PER_VALUE), "--mcq-n",
                                   str(MCQ_N), "--methods", DOSE, "--compare", "default",
                                   "--compare-pack", str(full_pack_dir)])
    assert res.exit_code == 0, res.output
    report = _report(audit_dir)
    a, b = report["models"]
    assert a["leakage"] == b["leakage"] and a["profile"] == b["profile"]
    cmp = report["comparison"]
    assert cmp["profile_differences"] == [] and cmp["own_shift_differences"] == []
    page = _Collect()
    page.feed((audit_dir / "report.html").read_text())
    assert page.sections == ["profile", "encoding", "dose", "leakage", "gate", "compare"]
    assert page.images == 2 * 8 + 1
    cells = Cells(report)
    for path, fmt, text in page.cells:
        assert text == format_value(cells.get(path), fmt), path
