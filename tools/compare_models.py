"""The models side by side: what their packs hold, and decode speed with and without steering.

For each `--model NAME=PACK`: blocks and hidden size, per value the best held-out probe
accuracy (and its block) and the steered blocks, the gate, value-vector similarity against
the Schwartz circumplex (at the block where the probes are jointly best), and the plots
(docs/models_<slug>_probe_accuracy.png, docs/models_<slug>_similarity.png, and one
figure of mean probe accuracy by relative depth for all models). With `--decode`, greedy
decode tok/s of a plain and a steered reply (benevolence toward the pack's P0, gate on),
alternating, median of `--rounds`; each model is loaded only for its own measurement.

Usage: .venv/bin/python tools/compare_models.py --model default=packs/smollm2 \
       --model qwen2.5-1.5b=packs/qwen1.5b [--decode] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROMPT = ("My coworker is overwhelmed and asked me to help her finish a report tonight, "
          "but I planned to relax. What should I do?")


def _slug(name: str) -> str:
    return name.replace(".", "").replace("/", "-")


def pack_summary(name: str, pack_dir: Path, docs: Path) -> dict[str, Any]:
    from conva_mlx.packs.analysis import value_structure
    from conva_mlx.packs.pack import load_pack
    from conva_mlx.plots import plot_accuracy_by_layer, plot_heatmap

    pack = load_pack(pack_dir)
    rep = value_structure(pack)
    accs = {v: e.probes.accuracies for v, e in pack.values.items()}
    plot_accuracy_by_layer(accs, {v: e.layers for v, e in pack.values.items()},
                           docs / f"models_{_slug(name)}_probe_accuracy.png",
                           f"Probe accuracy by block - {pack.model.model_id}")
    plot_heatmap(rep.cosine, rep.values, docs / f"models_{_slug(name)}_similarity.png",
                 f"Value vectors at block {rep.layer} ({pack.model.model_id})")
    gate = pack.gate
    return {
        "name": name, "model_id": pack.model.model_id, "blocks": pack.model.num_layers,
        "hidden": pack.model.hidden_size,
        "values": {v: {"best_block": int(np.argmax(a)), "best_acc": round(float(a.max()), 3),
                       "steered": e.layers,
                       "steered_acc": [round(float(a[k]), 3) for k in e.layers]}
                   for v, e, a in ((v, e, accs[v]) for v, e in pack.values.items())},
        "mean_acc_by_block": [round(float(x), 4) for x in np.mean(list(accs.values()), 0)],
        "similarity": {"layer": rep.layer, "neighbour_mean": round(rep.neighbour_mean, 3),
                       "opposite_mean": round(rep.opposite_mean, 3),
                       "spearman": round(rep.spearman, 2)},
        "gate": None if gate is None else {
            "layer": gate.layer, "threshold": round(gate.threshold, 3),
            "precision": round(gate.metrics.precision, 3),
            "recall": round(gate.metrics.recall, 3)},
    }


def decode_speed(name: str, pack_dir: Path, rounds: int, tokens: int) -> dict[str, Any]:
    from conva_mlx.models.loading import load_model
    from conva_mlx.packs.pack import load_pack
    from conva_mlx.steering import GenOptions, SteerConfig, SteeringSession, Target

    lm = load_model(name)
    pack = load_pack(pack_dir)
    session = SteeringSession(lm, pack)
    p0 = pack.values["benevolence"].default_p0
    configs = {"plain": SteerConfig(method="none"),
               "steered": SteerConfig([Target("benevolence", p0)])}
    opts = GenOptions(max_tokens=tokens)
    session.generate(PROMPT, configs["plain"], GenOptions(max_tokens=4))  # warm-up
    tps: dict[str, list[float]] = {k: [] for k in configs}
    gate_open = None
    for _ in range(rounds):
        for kind, cfg in configs.items():
            result = session.generate(PROMPT, cfg, opts)
            tps[kind].append(result.generation_tps)
            if kind == "steered":
                gate_open = result.gate.open
    out = {"dtype": lm.dtype, "tokens": tokens, "rounds": rounds, "gate_open": gate_open,
           **{f"{k}_tps": round(statistics.median(v), 2) for k, v in tps.items()},
           **{f"{k}_all": [round(x, 2) for x in v] for k, v in tps.items()}}
    del session, lm
    gc.collect()
    return out


def plot_depth(summaries: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for s in summaries:
        acc = np.array(s["mean_acc_by_block"])
        depth = (np.arange(len(acc)) + 1) / len(acc)
        ax.plot(depth, acc, lw=1.8, label=f"{s['name']} ({s['blocks']} blocks, "
                                          f"hidden {s['hidden']})")
    ax.set_xlabel("relative depth (block k+1 of n)")
    ax.set_ylabel("held-out probe accuracy, mean of 10 values")
    ax.set_ylim(0.5, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Probe accuracy by relative depth")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def markdown(summaries: list[dict[str, Any]]) -> str:
    """The docs tables: the models, then best probe accuracy (block) and steered blocks."""
    head = "| | " + " | ".join(f"`{s['name']}`" for s in summaries) + " |"
    rule = "|---" * (len(summaries) + 1) + "|"

    def row(label: str, cells: list[str]) -> str:
        return f"| {label} | " + " | ".join(cells) + " |"

    lines = [head, rule,
             row("blocks, hidden", [f"{s['blocks']}, {s['hidden']}" for s in summaries]),
             row("gate: block, held-out precision / recall",
                 [f"{g['layer']}, {g['precision']:.3f} / {g['recall']:.3f}" if g else "-"
                  for g in (s["gate"] for s in summaries)]),
             row("similarity block; neighbours / opposites mean cosine; Spearman rho",
                 [f"{m['layer']}; {m['neighbour_mean']:+.3f} / {m['opposite_mean']:+.3f}; "
                  f"{m['spearman']:+.2f}" for m in (s["similarity"] for s in summaries)])]
    if all("decode" in s for s in summaries):
        lines.append(row("decode tok/s plain / steered (median)",
                         [f"{d['plain_tps']:.1f} / {d['steered_tps']:.1f}"
                          for d in (s["decode"] for s in summaries)]))
    lines += ["", "| value | " + " | ".join(f"`{s['name']}` best (block); steered"
                                            for s in summaries) + " |",
              "|---" * (len(summaries) + 1) + "|"]
    for v in summaries[0]["values"]:
        cells = []
        for s in summaries:
            e = s["values"][v]
            cells.append(f"{e['best_acc']:.2f} ({e['best_block']}); "
                         + ", ".join(str(k) for k in e["steered"]))
        lines.append(row(v, cells))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=PACK_DIR")
    ap.add_argument("--decode", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--docs", type=Path, default=ROOT / "docs")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    summaries = []
    for spec in args.model:
        name, pack_dir = spec.split("=", 1)
        s = pack_summary(name, Path(pack_dir), args.docs)
        if args.decode:
            s["decode"] = decode_speed(name, Path(pack_dir), args.rounds, args.tokens)
        summaries.append(s)
        print(json.dumps({k: v for k, v in s.items() if k != "mean_acc_by_block"}), flush=True)
    plot_depth(summaries, args.docs / "models_probe_depth.png")
    print(markdown(summaries))
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=1))


if __name__ == "__main__":
    main()
