"""Strength sweep: control success and fluency as ConVA's P0 and CAA's coefficient grow.

Both methods run side by side on the same dilemmas (by default the calibration half:
strengths are tuned there, and reported on the test half), judged by the same judge, so
their curves are comparable at equal perturbation size (mean |delta| per steered block).
Each setting is an ordinary resumable `run_eval` in its own subdirectory of --out; a
rerun continues where it stopped.

Fair strengths: for each method the chosen setting is the one with the best CSR whose FR
is within 3 points of the unsteered model's FR on the same prompts (`none` is run too).

Writes OUT/sweep.json, OUT/sweep.md and OUT/sweep.png and prints the table.

Usage: .venv/bin/python tools/strength_sweep.py --pack packs/smollm2 --out runs/sweep \
           [--n 10] [--p0 0.9,0.95,0.99,0.999] [--caa 0.5,1,2,4,8] [--max-tokens 64] \
           [--split calibration|test] [--judge offline-v2] [--direction probe|mean-diff]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from conva_mlx.errors import ConvaError
from conva_mlx.evaluation.judge_registry import DEFAULT_JUDGE, JUDGE_NAMES, make_judge
from conva_mlx.evaluation.results import EvalResults
from conva_mlx.evaluation.runner import run_eval
from conva_mlx.evaluation.settings import EvalContext, EvalOptions
from conva_mlx.evaluation.store import JsonlStore
from conva_mlx.evaluation.strength import FR_SLACK, choose_fair
from conva_mlx.fsutil import atomic_write_json, atomic_write_text
from conva_mlx.models.loading import load_model
from conva_mlx.packs.pack import load_pack
from conva_mlx.plots import plot_strength_sweep
from conva_mlx.steering import SteeringSession
from conva_mlx.values import parse_values


def _floats(spec: str) -> list[float]:
    return [float(x) for x in spec.split(",") if x.strip()]


def _summarise(out: Path, method: str, label: str, results: EvalResults) -> dict[str, Any]:
    """Mean |delta|, CSR, FR and median reply perplexity of one setting."""
    gens = JsonlStore(out / "generations.jsonl").records
    judged = JsonlStore(out / "judgements.jsonl").records
    deltas = [g["delta_norm_mean"] for g in gens.values() if g["method"] == method]
    ppl = [j["fluency_score"] for j in judged.values()
           if j["fluency_score"] is not None and json.loads(j["generation"])[0] == method]
    mean = results.mean[method]
    return {"method": method, "label": label, "delta": float(np.mean(deltas)),
            "csr": mean.csr, "fr": mean.fr, "median_ppl": float(np.median(ppl)),
            "n": len(deltas)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pack", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--model", default="default")
    ap.add_argument("--values", default="all")
    ap.add_argument("--n", type=int, default=10, help="dilemmas per value")
    ap.add_argument("--split", choices=["calibration", "test"], default="calibration")
    ap.add_argument("--judge", choices=list(JUDGE_NAMES), default=DEFAULT_JUDGE)
    ap.add_argument("--direction", choices=["probe", "mean-diff"], default=None)
    ap.add_argument("--fr-slack", type=float, default=FR_SLACK,
                    help="chosen setting: best CSR with FR >= FR(none) - this")
    ap.add_argument("--p0", default="0.9,0.95,0.99,0.999")
    ap.add_argument("--caa", default="0.5,1,2,4,8")
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()

    lm = load_model(args.model)
    session = SteeringSession(lm, load_pack(args.pack))
    values = parse_values(args.values)
    judge = make_judge(args.judge, lm=lm, values=values)
    settings = ([("none", "-", {})]
                + [("conva", f"P0={p}", {"p0": p, "direction": args.direction})
                   for p in _floats(args.p0)]
                + [("caa", f"x{c:g}", {"caa_coef": c}) for c in _floats(args.caa)])
    rows = []
    for method, label, change in settings:
        out = args.out / f"{method}-{label.replace('=', '')}"
        print(f"== {method} {label}")
        opts = EvalOptions(values=values, methods=[method], n=args.n, general=False,
                           max_tokens=args.max_tokens, split=args.split, **change)
        results = run_eval(EvalContext(session, out, lambda: judge, Path(args.pack)), opts)
        rows.append(_summarise(out, method, label, results))
    chosen = choose_fair(rows, args.fr_slack)

    lines = ["| method | setting | mean \\|delta\\| per block | CSR | FR | median ppl | n "
             "| chosen |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['label']} | {r['delta']:.2f} | {r['csr']:.2f} | "
              f"{r['fr']:.2f} | {r['median_ppl']:.1f} | {r['n']} | "
              f"{'yes' if chosen.get(r['method']) is r else ''} |" for r in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    atomic_write_text(args.out / "sweep.md", table)
    atomic_write_json(args.out / "sweep.json", {
        "model": lm.model_id, "pack": args.pack, "n_per_value": args.n, "split": args.split,
        "judge": judge.describe(), "fr_slack": args.fr_slack, "rows": rows,
        "chosen": {m: r["label"] for m, r in chosen.items()}})
    curves: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["method"] == "none":
            continue
        curves.setdefault(r["method"], []).append(r)
    plot_strength_sweep(curves, args.out / "sweep.png")
    print(f"wrote {args.out}/sweep.json, sweep.md, sweep.png")


if __name__ == "__main__":
    try:
        main()
    except ConvaError as exc:  # user errors: one line, no traceback
        raise SystemExit(f"error: {exc}") from None
