"""The audit's page: one self-contained HTML file (PNGs inlined, no network, opens from disk),
with the PNGs beside it. Every number the page prints is read from the report's JSON through
`Cells`, and carries its JSON path (`data-path`), so a test can check page against data."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np

from conva_mlx.fsutil import atomic_write_text
from conva_mlx.plots import (
    plot_accuracy_heatmap,
    plot_bars,
    plot_dose_grid,
    plot_heatmap,
    plot_leakage,
    plot_profiles_radar,
    plot_value_map,
)

SECTIONS = {"profile": "What the model values, unsteered",
            "encoding": "How it encodes them",
            "dose": "How far each value can be moved",
            "leakage": "What else moves (leakage)",
            "gate": "What the gate does",
            "compare": "Two models side by side"}

# Run once the page has loaded: how many images decoded, for a headless browser to read.
IMAGE_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
});
</script>"""

STYLE = """<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1180px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
.cols { display: flex; gap: 1.5em; flex-wrap: wrap; align-items: flex-start; }
.cols > div { flex: 1 1 480px; min-width: 0; overflow-x: auto; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
table { border-collapse: collapse; margin: .6em 0; font-size: .82em; }
td, th { border: 1px solid #ddd; padding: .2em .5em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #555; font-size: .92em; } .lead { font-size: 1.08em; }
</style>"""


class Cells:
    """Formats numbers from the report and tags each with its JSON path."""

    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report

    def get(self, path: str) -> Any:
        node: Any = self.report
        for part in path.split("/"):
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    def num(self, path: str, fmt: str = ".2f", tag: str = "td") -> str:
        text = format_value(self.get(path), fmt)
        return f'<{tag} data-path="{html.escape(path)}" data-fmt="{fmt}">{text}</{tag}>'


def format_value(x: Any, fmt: str) -> str:
    """How the page prints a number (None as a dash)."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    return format(x, fmt)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


# ---------------------------------------------------------------- figures

def draw_figures(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """Every PNG of the report, named by model index and figure."""
    figs: dict[str, Path] = {}
    for i, m in enumerate(report["models"]):
        name = m["model"].split("/")[-1]
        p = m["profile"]["values"]
        figs[f"m{i}-profile"] = plot_profiles_radar(
            {name: ({v: x["favoured"] for v, x in p.items()}, {v: x["ci"] for v, x in p.items()})},
            out / f"m{i}-profile.png", f"Value profile, unsteered ({m['profile']['form']})")
        enc = m["encoding"]
        figs[f"m{i}-accuracy"] = plot_accuracy_heatmap(
            enc["accuracy"], out / f"m{i}-accuracy.png", f"Probe accuracy by block: {name}")
        figs[f"m{i}-cosine"] = plot_heatmap(
            np.array(enc["cosine"]), enc["values"], out / f"m{i}-cosine.png",
            f"Value-vector cosine at block {enc['layer']} (circumplex order)")
        figs[f"m{i}-map"] = plot_value_map(
            enc["mds"], out / f"m{i}-map.png", f"Value vectors in 2-D (MDS of 1 - cos): {name}")
        dose = m["dose"]
        figs[f"m{i}-dose-shift"] = plot_dose_grid(
            dose["per_value"], "shift", dose["default"], out / f"m{i}-dose-shift.png",
            f"Own-dilemma shift against the push: {name}", "shift (nats)")
        figs[f"m{i}-dose-fluency"] = plot_dose_grid(
            dose["per_value"], "fluency", dose["default"], out / f"m{i}-dose-fluency.png",
            f"Fluency against the push: {name}", "Δ log p(actions) (nats)")
        figs[f"m{i}-leakage"] = plot_leakage(
            m["leakage"], out / f"m{i}-leakage.png", f"Leakage of the default: {name}")
        gate = m["gate"]
        if gate.get("present") and gate["by_kind"]:
            kinds = {k: {"open rate": float(v["open_rate"])}
                     for k, v in gate["by_kind"].items() if "open_rate" in v}
            figs[f"m{i}-gate"] = plot_bars(kinds, out / f"m{i}-gate.png",
                                           f"Gate open rate by kind of query: {name}",
                                           "open rate")
    if len(report["models"]) == 2:
        series = {}
        for m in report["models"]:
            p = m["profile"]["values"]
            series[m["model"].split("/")[-1]] = ({v: x["favoured"] for v, x in p.items()},
                                                 {v: x["ci"] for v, x in p.items()})
        figs["compare-profile"] = plot_profiles_radar(series, out / "compare-profile.png",
                                                      "Value profiles, unsteered")
    return figs


# ---------------------------------------------------------------- sections

def _profile_html(c: Cells, i: int, figs: dict[str, Path]) -> str:
    m = c.get(f"models/{i}")
    rows = "".join(
        f"<tr><td>{v}</td>{c.num(f'models/{i}/profile/values/{v}/favoured')}"
        f"{c.num(f'models/{i}/profile/values/{v}/ci/0')}"
        f"{c.num(f'models/{i}/profile/values/{v}/ci/1')}"
        f"{c.num(f'models/{i}/profile/values/{v}/n', 'd')}</tr>"
        for v in m["profile"]["values"])
    return (f'<p class="lead">{html.escape(m["profile"]["sentence"])}</p>'
            f'{_img(figs[f"m{i}-profile"], "value profile")}'
            "<table><tr><th>value</th><th>favoured</th><th>95% low</th><th>95% high</th>"
            f"<th>n</th></tr>{rows}</table>")


def _encoding_html(c: Cells, i: int, figs: dict[str, Path]) -> str:
    enc = c.get(f"models/{i}/encoding")
    alike = "".join(f"<tr><td>{a['a']} – {a['b']}</td>"
                    f"{c.num(f'models/{i}/encoding/opposites_alike/{k}/cosine')}</tr>"
                    for k, a in enumerate(enc["opposites_alike"]))
    alike_html = ("<p>Opposite values encoded alike (cosine above the neighbours' mean): the "
                  "paper's <em>conflicting understandings</em>.</p><table><tr><th>pair</th>"
                  f"<th>cosine</th></tr>{alike}</table>" if alike else
                  "<p>No opposite pair is encoded more alike than the neighbours' mean.</p>")
    return ('<div class="cols"><div>' + _img(figs[f"m{i}-accuracy"], "probe accuracy")
            + "</div><div>" + _img(figs[f"m{i}-cosine"], "cosine similarities")
            + "</div><div>" + _img(figs[f"m{i}-map"], "value map") + "</div><div>"
            + "<table><tr><th>circumplex check</th><th></th></tr>"
            + f"<tr><td>Spearman rho (cosine vs closeness)</td>"
              f"{c.num(f'models/{i}/encoding/spearman')}</tr>"
            + f"<tr><td>mean cosine, neighbours</td>"
              f"{c.num(f'models/{i}/encoding/neighbour_mean')}</tr>"
            + f"<tr><td>mean cosine, opposites</td>"
              f"{c.num(f'models/{i}/encoding/opposite_mean')}</tr></table>"
            + alike_html + "</div></div>")


def _dose_html(c: Cells, i: int, figs: dict[str, Path]) -> str:
    dose = c.get(f"models/{i}/dose")
    head = "".join(f"<th>{html.escape(s)}</th>" for s in dose["settings"])
    rows = "".join(
        f"<tr><td>{html.escape(s)}</td>"
        f"{c.num(f'models/{i}/dose/overall/{s}/shift', '+.2f')}"
        f"{c.num(f'models/{i}/dose/overall/{s}/favoured')}"
        f"{c.num(f'models/{i}/dose/overall/{s}/fluency', '+.2f')}"
        f"{c.num(f'models/{i}/dose/overall/{s}/delta_over_h', '.3f')}</tr>"
        for s in dose["settings"])
    per_value = "".join(
        f"<tr><td>{v}</td>" + "".join(c.num(f"models/{i}/dose/per_value/{v}/{s}/shift", "+.2f")
                                      for s in dose["settings"]) + "</tr>"
        for v in dose["per_value"])
    what = ("ICA's instruction before the question and the calibrated push"
            if dose["default"].startswith("ica+") else "the calibrated push")
    return (f"<p>The default is <b>{html.escape(dose['default'])}</b> ({what}, "
            "starred). Shift = log p(value action) − log p(competing action), "
            "steered minus unsteered, on each value's own dilemmas; fluency = change of "
            "log p(both actions); the x axis is the push relative to the hidden state.</p>"
            + _img(figs[f"m{i}-dose-shift"], "dose-response: shift")
            + _img(figs[f"m{i}-dose-fluency"], "dose-response: fluency")
            + "<table><tr><th>setting</th><th>shift</th><th>favoured</th><th>fluency</th>"
              f"<th>|δ|/|h|</th></tr>{rows}</table>"
            + f"<table><tr><th>shift per value</th>{head}</tr>{per_value}</table>")


def _leakage_html(c: Cells, i: int, figs: dict[str, Path]) -> str:
    lk = c.get(f"models/{i}/leakage")
    p = f"models/{i}/leakage"
    rows = "".join(
        f"<tr><td>{v}</td>{c.num(f'models/{i}/leakage/rows/{v}/target_shift', '+.2f')}"
        f"{c.num(f'models/{i}/leakage/rows/{v}/mean_abs_off_target')}"
        f"{c.num(f'models/{i}/leakage/rows/{v}/selectivity')}"
        f"<td>{html.escape(r['largest_mover'])}</td>"
        f"{c.num(f'models/{i}/leakage/circumplex/{v}/neighbours', '+.2f')}"
        f"{c.num(f'models/{i}/leakage/circumplex/{v}/opposites', '+.2f')}"
        f"{c.num(f'models/{i}/leakage/circumplex/{v}/holds')}</tr>"
        for v, r in lk["rows"].items())
    return ("<p>Rows: the value steered with the default; columns: the value whose test "
            "dilemmas are scored (paired shift against unsteered; * = the 95% interval "
            "excludes 0). Selectivity = the target's shift over the mean absolute off-target "
            f"shift. Overall selectivity {c.num(f'{p}/selectivity', '.2f', 'b')};"
            f" the target moved most in {c.num(f'{p}/target_largest_rows', 'd', 'b')}"
            f" rows; the circumplex's prediction (neighbours move more than opposites) holds in "
            f"{c.num(f'{p}/circumplex_holds', 'd', 'b')} rows.</p>"
            + _img(figs[f"m{i}-leakage"], "leakage matrix")
            + "<table><tr><th>steered</th><th>target shift</th><th>mean |off-target|</th>"
              "<th>selectivity</th><th>largest mover</th><th>neighbours</th><th>opposites</th>"
              f"<th>circumplex holds</th></tr>{rows}</table>")


def _gate_html(c: Cells, i: int, figs: dict[str, Path]) -> str:
    gate = c.get(f"models/{i}/gate")
    if not gate.get("present"):
        return "<p>This pack has no gate: every push is applied to every query.</p>"
    p = f"models/{i}/gate"
    ability = "".join(f"<tr><td>{html.escape(k)}</td>"
                      f"{c.num(f'{p}/general_ability/{k}/accuracy')}"
                      f"{c.num(f'{p}/general_ability/{k}/gate_open_rate')}"
                      f"{c.num(f'{p}/general_ability/{k}/n', 'd')}</tr>"
                      for k in gate["general_ability"])
    fig = _img(figs[f"m{i}-gate"], "gate open rate") if f"m{i}-gate" in figs else ""
    return (f"<p>The gate (a probe at block {gate['layer']}) decides whether a query is "
            "value-related; closed, the reply is exactly the unsteered one.</p>"
            '<div class="cols"><div>' + fig + "</div><div>"
            "<table><tr><th>held-out (value dilemmas vs unrelated)</th><th></th></tr>"
            f"<tr><td>precision</td>{c.num(f'{p}/held_out/precision')}</tr>"
            f"<tr><td>recall</td>{c.num(f'{p}/held_out/recall')}</tr>"
            f"<tr><td>open rate on value-unrelated queries</td>"
            f"{c.num(f'{p}/unrelated_open_rate')}</tr></table>"
            "<table><tr><th>general ability (multiple choice)</th><th>accuracy</th>"
            f"<th>gate open</th><th>n</th></tr>{ability}</table></div></div>")


def _compare_html(c: Cells, figs: dict[str, Path]) -> str:
    cmp = c.get("comparison")
    a, b = (x.split("/")[-1] for x in cmp["models"])
    prof = "".join(f"<tr><td>{d['value']}</td>"
                   f"{c.num(f'comparison/profile_differences/{k}/a')}"
                   f"{c.num(f'comparison/profile_differences/{k}/b')}</tr>"
                   for k, d in enumerate(cmp["profile_differences"]))
    own = "".join(f"<tr><td>{d['value']}</td>"
                  f"{c.num(f'comparison/own_shift_differences/{k}/a', '+.2f')}"
                  f"{c.num(f'comparison/own_shift_differences/{k}/b', '+.2f')}</tr>"
                  for k, d in enumerate(cmp["own_shift_differences"]))
    prof_html = (f"<table><tr><th>profile: value</th><th>{a}</th><th>{b}</th></tr>{prof}"
                 "</table>" if prof else "<p>No profile difference lies outside both "
                                         "intervals.</p>")
    own_html = (f"<table><tr><th>default's own shift: value</th><th>{a}</th><th>{b}</th></tr>"
                f"{own}</table>" if own else "<p>No difference in the default's own shift "
                                             "lies outside both intervals.</p>")
    return (_img(figs["compare-profile"], "profiles compared")
            + "<p>Differences outside both models' 95% intervals:</p>" + prof_html + own_html
            + "<table><tr><th></th>" f"<th>{a}</th><th>{b}</th></tr>"
            + f"<tr><td>selectivity of the default</td>{c.num('comparison/selectivity/0')}"
              f"{c.num('comparison/selectivity/1')}</tr>"
            + f"<tr><td>Spearman rho (encoding vs circumplex)</td>"
              f"{c.num('comparison/spearman/0')}{c.num('comparison/spearman/1')}</tr></table>")


def render_html(report: dict[str, Any], figs: dict[str, Path]) -> str:
    c = Cells(report)
    models = report["models"]
    title = " vs ".join(m["model"] for m in models)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>conva-mlx audit: {html.escape(title)}</title>{STYLE}</head><body>",
             f"<h1>Value audit: {html.escape(title)}</h1>",
             '<p class="note">' + " ".join(
                 f"{html.escape(m['model'])}: {m['dilemmas']} test-half dilemmas "
                 f"({m['n_per_value'] or 'all'} per value), pack recipe "
                 f"{html.escape(m['pack']['recipe'])}." for m in models)
             + " Intervals are 95% bootstrap intervals over dilemmas.</p>"]
    builders = {"profile": _profile_html, "encoding": _encoding_html, "dose": _dose_html,
                "leakage": _leakage_html, "gate": _gate_html}
    for key, builder in builders.items():
        body = [f'<div><h3>{html.escape(m["model"])}</h3>{builder(c, i, figs)}</div>'
                for i, m in enumerate(models)]
        parts.append(f'<section id="{key}"><h2>{SECTIONS[key]}</h2>'
                     f'<div class="cols">{"".join(body)}</div></section>')
    if report.get("comparison"):
        parts.append(f'<section id="compare"><h2>{SECTIONS["compare"]}</h2>'
                     f"{_compare_html(c, figs)}</section>")
    parts.append(IMAGE_CHECK + "</body></html>")
    return "\n".join(parts)


def write_page(report: dict[str, Any], out: Path) -> Path:
    figs = draw_figures(report, out)
    page = out / "report.html"
    atomic_write_text(page, render_html(report, figs))
    return page
