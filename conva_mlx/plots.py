"""PNG plots: probe accuracy by layer, similarity heatmaps, choice shifts, value profiles and
leakage matrices (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from conva_mlx.fsutil import atomic_path


def plot_accuracy_by_layer(accuracies: dict[str, np.ndarray], selected: dict[str, list[int]],
                           out: Path, title: str, threshold: float = 0.9) -> Path:
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    cmap = plt.get_cmap("tab10")
    for i, (name, acc) in enumerate(accuracies.items()):
        ax.plot(np.arange(len(acc)), acc, label=name, color=cmap(i % 10), lw=1.6)
        sel = selected.get(name, [])
        ax.scatter(sel, acc[sel], color=cmap(i % 10), s=10)
    ax.axhline(threshold, color="grey", ls="--", lw=1)
    ax.set_xlabel("block (output of decoder block k)")
    ax.set_ylabel("held-out probe accuracy")
    ax.set_ylim(0.4, 1.02)
    ax.set_title(title)
    ax.legend(ncol=2, fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_heatmap(matrix: np.ndarray, labels: list[str], out: Path, title: str,
                 vmin: float = -1.0, vmax: float = 1.0) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=110)
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    return _save(fig, out)


def plot_bars(table: dict[str, dict[str, float]], out: Path, title: str, ylabel: str) -> Path:
    """Grouped bars: rows (e.g. values) x series (e.g. methods)."""
    rows = list(table)
    series = sorted({s for r in table.values() for s in r}, key=lambda s: list(
        next(iter(table.values())).keys()).index(s) if s in next(iter(table.values())) else 99)
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 1.1), 4.8), dpi=110)
    width = 0.8 / max(1, len(series))
    for i, s in enumerate(series):
        ys = [table[r].get(s, np.nan) for r in rows]
        ax.bar(np.arange(len(rows)) + i * width, ys, width, label=s)
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, rows, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=3)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out)


def plot_strength_sweep(curves: dict[str, list[dict[str, float | str]]], out: Path) -> Path:
    """CSR and FR against the mean perturbation norm, one line per method.

    Each curve point has keys 'delta' (mean |delta| per steered block), 'csr', 'fr' and
    'label' (the setting, e.g. 'P0=0.99' or 'x4')."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for ax, metric, name in ((axes[0], "csr", "control success rate"),
                             (axes[1], "fr", "fluency rate")):
        for method, points in curves.items():
            xs = [float(p["delta"]) for p in points]
            ys = [float(p[metric]) for p in points]
            ax.plot(xs, ys, marker="o", label=method)
            for i, (x, y, p) in enumerate(zip(xs, ys, points)):
                # alternate above / below so that close points keep readable labels
                ax.annotate(str(p["label"]), (x, y), textcoords="offset points",
                            xytext=(3, 6 if i % 2 == 0 else -12), fontsize=7)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("mean |delta| per steered block")
        ax.set_ylabel(metric.upper())
        ax.set_ylim(-0.02, 1.05)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out)


def plot_shifts(methods: dict[str, dict[str, Any]], out: Path, title: str) -> Path:
    """Per value and method, the choice shift against unsteered with its 95% interval."""
    values = list(next(iter(methods.values()))["per_value"])
    fig, ax = plt.subplots(figsize=(max(8, len(values) * 1.1), 4.8), dpi=110)
    width = 0.8 / max(1, len(methods))
    for i, (label, r) in enumerate(methods.items()):
        cells = [r["per_value"][v] for v in values]
        ys = np.array([c["shift"] for c in cells])
        err = np.array([[c["shift"] - c["ci"][0] for c in cells],
                        [c["ci"][1] - c["shift"] for c in cells]])
        ax.bar(np.arange(len(values)) + i * width, ys, width, yerr=err, capsize=2,
               label=f"{label} ({r['shift']:+.2f})")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(np.arange(len(values)) + 0.4 - width / 2, values, rotation=30, ha="right")
    ax.set_ylabel("shift against unsteered")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=3)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out)


def plot_profile_radar(profile: dict[str, float], ci: dict[str, list[float]], out: Path,
                       title: str) -> Path:
    """A circular chart of per-value shares in circumplex order, with the 95% band."""
    return plot_profiles_radar({"unsteered": (profile, ci)}, out, title)


def plot_profiles_radar(series: dict[str, tuple[dict[str, float], dict[str, list[float]]]],
                        out: Path, title: str) -> Path:
    """One or more profiles (name -> (share per value, 95% interval per value)) on one
    circular chart in circumplex order."""
    names = list(next(iter(series.values()))[0])
    angles = np.linspace(0, 2 * np.pi, len(names), endpoint=False)
    closed = np.concatenate([angles, angles[:1]])

    def ring(xs: list[float]) -> np.ndarray:
        return np.concatenate([np.array(xs), np.array(xs[:1])])

    fig = plt.figure(figsize=(6.4, 6.4), dpi=110)
    ax = fig.add_subplot(projection="polar")
    cmap = plt.get_cmap("tab10")
    for i, (label, (profile, ci)) in enumerate(series.items()):
        color = cmap(i % 10)
        ax.fill_between(closed, ring([ci[n][0] for n in names]),
                        ring([ci[n][1] for n in names]), alpha=0.18, color=color)
        ax.plot(closed, ring([profile[n] for n in names]), marker="o", color=color,
                label=f"{label} (band: 95% interval)")
    ax.plot(closed, np.full(closed.shape, 0.5), color="grey", ls="--", lw=0.8, label="0.5")
    ax.set_xticks(angles, names, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(title, pad=18)
    ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.15, -0.1))
    return _save(fig, out)


def plot_accuracy_heatmap(accuracy: dict[str, list[float]], out: Path, title: str) -> Path:
    """Held-out probe accuracy, values (rows) x blocks (columns)."""
    names = list(accuracy)
    m = np.array([accuracy[n] for n in names])
    fig, ax = plt.subplots(figsize=(max(7, m.shape[1] * 0.3), 4.6), dpi=110)
    im = ax.imshow(m, cmap="viridis", vmin=0.5, vmax=1.0, aspect="auto")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("block (output of decoder block k)")
    fig.colorbar(im, ax=ax, fraction=0.03, label="held-out accuracy")
    ax.set_title(title)
    return _save(fig, out)


def plot_value_map(coords: dict[str, list[float]], out: Path, title: str) -> Path:
    """The value vectors in 2-D (classical MDS of 1 - cosine), joined in circumplex order:
    a model that encodes the circumplex draws a ring without crossings."""
    names = list(coords)
    xy = np.array([coords[n] for n in names])
    fig, ax = plt.subplots(figsize=(6, 5.6), dpi=110)
    ring = np.vstack([xy, xy[:1]])
    ax.plot(ring[:, 0], ring[:, 1], color="grey", lw=0.8, ls="--",
            label="circumplex order")
    cmap = plt.get_cmap("tab10")
    for i, n in enumerate(names):
        ax.scatter(xy[i, 0], xy[i, 1], color=cmap(i % 10), s=40, zorder=3)
        ax.annotate(n, xy[i], textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("MDS 1")
    ax.set_ylabel("MDS 2")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_dose_grid(per_value: dict[str, dict[str, dict[str, Any]]], metric: str,
                   default_label: str, out: Path, title: str, ylabel: str) -> Path:
    """Per value (one panel each), `metric` against |delta| / |h| for every method's
    settings (labels like 'caa x2'); the default setting is starred."""
    values = list(per_value)
    cols = 5
    rows = (len(values) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.7 * rows), dpi=100,
                             squeeze=False)
    cmap = plt.get_cmap("tab10")
    methods = list(dict.fromkeys(label.split()[0] for v in values for label in per_value[v]))
    for ax, v in zip(axes.flat, values):
        for i, m in enumerate(methods):
            pts = sorted(((r["delta_over_h"], r[metric]) for label, r in per_value[v].items()
                          if label.split()[0] == m and r[metric] is not None))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3,
                        color=cmap(i % 10), label=m)
        d = per_value[v].get(default_label)
        if d is not None and d[metric] is not None:
            ax.scatter([d["delta_over_h"]], [d[metric]], marker="*", s=140, color="black",
                       zorder=4, label="default")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(v, fontsize=9)
        ax.set_xscale("symlog", linthresh=0.01)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(values):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=6)
    fig.supxlabel("|delta| / |h| per steered block", fontsize=9)
    fig.supylabel(ylabel, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out)


def plot_leakage(matrix: dict[str, Any], out: Path, title: str) -> Path:
    """Rows: value steered; columns: value whose dilemmas moved; * = interval excludes 0."""
    rows = list(matrix["rows"])
    cols = list(next(iter(matrix["rows"].values()))["cells"])
    m = np.array([[matrix["rows"][r]["cells"][c]["shift"] for c in cols] for r in rows])
    lim = float(np.nanmax(np.abs(m))) or 1.0
    fig, ax = plt.subplots(figsize=(8, 6.8), dpi=110)
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            cell = matrix["rows"][r]["cells"][c]
            star = "*" if cell["ci"][0] > 0 or cell["ci"][1] < 0 else ""
            ax.text(j, i, f"{cell['shift']:.1f}{star}", ha="center", va="center", fontsize=7,
                    fontweight="bold" if r == c else "normal")
    ax.set_xlabel("dilemmas scored")
    ax.set_ylabel("value steered")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(f"{title} (selectivity {matrix['selectivity']}, target largest in "
                 f"{matrix['target_largest_rows']}/{len(rows)})", fontsize=9)
    return _save(fig, out)


def _save(fig: Any, out: Path) -> Path:
    """Lay out, write the PNG atomically, and free the figure."""
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
