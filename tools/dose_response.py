"""Dose-responses from `conva-mlx choices` runs: shift, share favoured, fluency and |delta|/|h|
against strength, per method, in one table and one plot per model.

Reads the scores of one or more choices run directories (any mix of methods and
strengths, scored on each value's own dilemmas; run them with --strengths), and measures the
hidden-state norm |h| at every block on the same prompts (last prompt token, unsteered), so
each setting's push is also reported relative to the state it is added to: mean |delta| per
steered block / mean |h| over those blocks (AxBench and Im & Li find the effect tracks this).

Fluency here is the change of log p(both written actions) in nats (the instrument's own
fluency proxy: a push that breaks the text makes both actions less likely).

Usage:
  .venv/bin/python tools/dose_response.py --pack DIR [--model default] --out runs/dose-smol \\
      runs/choices-a runs/choices-b ...
(on Linux preload OpenBLAS as the CLI does:
 export LD_PRELOAD=$(.venv/bin/python -m conva_mlx.models.blas))
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conva_mlx.data.dataset import ValueData  # noqa: E402
from conva_mlx.evaluation.choices import load_choice_items  # noqa: E402
from conva_mlx.evaluation.dose import dose_row, hidden_norms, own_rows  # noqa: E402
from conva_mlx.evaluation.store import JsonlStore  # noqa: E402
from conva_mlx.models.loading import load_model  # noqa: E402
from conva_mlx.packs.pack import load_pack  # noqa: E402
from conva_mlx.steering import SteeringSession  # noqa: E402
from conva_mlx.values import VALUE_NAMES  # noqa: E402


def collect(dirs: list[Path]) -> tuple[dict[tuple[str, float | None], list[dict[str, Any]]],
                                       dict[str, dict[str, Any]]]:
    records = [r for d in dirs for r in JsonlStore(d / "choices.jsonl").records.values()]
    return own_rows(records)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--pack", required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    pack = load_pack(args.pack)
    lm = load_model(args.model)
    session = SteeringSession(lm, pack)
    settings, base = collect(args.dirs)
    ids = {r["id"] for rows in settings.values() for r in rows}
    halves = {split: {it.id: it for it in load_choice_items(list(VALUE_NAMES), split, None,
                                                            ValueData())}
              for split in ("calibration", "test")}
    items = [it for half in halves.values() for i, it in half.items() if i in ids]
    used = [split for split, half in halves.items() if ids & set(half)]
    split_name = " and ".join(f"{s} half" for s in used)
    norms = hidden_norms(session, [it.prompt for it in items])
    table = []
    for (method, strength), rows in sorted(settings.items(),
                                           key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        row = dose_row(rows, base, pack, norms)
        if row["n"]:
            table.append({"method": method, "strength": strength, **row})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dose.json").write_text(json.dumps({"model": lm.model_id, "rows": table,
                                                    "hidden_norm_by_block":
                                                        [round(float(x), 3) for x in norms]},
                                                   indent=1))
    lines = ["| method | strength | n | shift | favoured (unsteered) | fluency | |δ|/|h| |",
             "|---|---|---|---|---|---|---|"]
    for t in table:
        s = "-" if t["strength"] is None else f"{t['strength']:g}"
        lines.append(f"| {t['method']} | {s} | {t['n']} | {t['shift']:+.2f} | "
                     f"{t['favoured']:.2f} ({t['unsteered_favoured']:.2f}) | "
                     f"{t['fluency']:+.2f} | {t['delta_over_h']:.3f} |")
    (args.out / "dose.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(table, args.out / "dose.png", f"{lm.model_id} ({split_name})")


def plot(table: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, 2, figsize=(12, 8))
    axes = grid.ravel()
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in table:
        by_method[t["method"]].append(t)
    for method, rows in by_method.items():
        xs = [r["delta_over_h"] for r in rows]
        for ax, key in zip(axes, ("shift", "favoured", "fluency")):
            ax.plot(xs, [r[key] for r in rows], "o-", label=method)
        # the trade-off a default is chosen on: effect bought per unit of fluency lost
        axes[3].plot([r["fluency"] for r in rows], [r["shift"] for r in rows], "o-",
                     label=method)
        for r in rows:
            if r["strength"] is not None:
                axes[3].annotate(f"{r['strength']:g}", (r["fluency"], r["shift"]),
                                 fontsize=7, xytext=(3, 3), textcoords="offset points")
    for ax, name in zip(axes, ("own-dilemma shift (nats)", "share favouring the value",
                               "fluency: Δ log p(actions) (nats)")):
        ax.set_xlabel("|δ| / |h| per steered block")
        ax.set_ylabel(name)
        ax.set_xscale("symlog", linthresh=0.01)
        ax.grid(alpha=0.3)
    axes[3].set_xlabel("fluency: Δ log p(actions) (nats; right is better)")
    axes[3].set_ylabel("own-dilemma shift (nats; up is better)")
    axes[3].set_title("effect against fluency cost (labels: strength)", fontsize=9)
    axes[3].grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Dose-response: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
