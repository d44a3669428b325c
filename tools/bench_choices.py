"""Benchmark: seconds the choice instrument takes per method and strength, side by side.

Scores 10 values x N test dilemmas (default 30) with each setting into a fresh store, in
one run on one model, and prints seconds per setting, dilemmas per second and the ratio to
the unsteered setting (the target: under a minute per method and strength for 10 x 30 on
the default model). Also times a one-prompt-at-a-time run (batch size 1) of the unsteered
setting, the speed the batched engine is there to beat.

Usage: .venv/bin/python tools/bench_choices.py --pack DIR [--model default] [--n 30]
       [--methods none,ica,caa,caa:2,conva] [--form likelihood]
(on Linux preload OpenBLAS as the CLI does:
 export LD_PRELOAD=$(.venv/bin/python -m conva_mlx.models.blas))
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conva_mlx.evaluation.choices import (  # noqa: E402
    ChoiceOptions,
    ChoiceRun,
    load_choice_items,
    parse_settings,
    score_all,
)
from conva_mlx.models.loading import load_model  # noqa: E402
from conva_mlx.packs.pack import load_pack  # noqa: E402
from conva_mlx.steering import SteeringSession  # noqa: E402
from conva_mlx.values import VALUE_NAMES  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pack", required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--methods", default="none,ica,caa,caa:2,conva")
    ap.add_argument("--form", default="likelihood", choices=["likelihood", "letter"])
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    pack = load_pack(args.pack)
    lm = load_model(args.model)
    session = SteeringSession(lm, pack)
    values = list(VALUE_NAMES)
    items = load_choice_items(values, "test", args.n)
    rows = []
    runs = [(s, args.batch_size) for s in parse_settings(args.methods)]
    runs.append((parse_settings("none")[0], 1))
    for setting, batch in runs:
        with tempfile.TemporaryDirectory() as tmp:
            opts = ChoiceOptions(values=values, settings=[setting], form=args.form,
                                 n=args.n, batch_size=batch, show_progress=False)
            run = ChoiceRun(session, Path(tmp))
            if setting.steers:  # the unsteered baseline is scored first, untimed
                score_all(run, ChoiceOptions(values=values, settings=[], form=args.form,
                                             n=args.n, batch_size=batch,
                                             show_progress=False), items)
            start = time.perf_counter()
            score_all(run, opts, items)
            rows.append((f"{setting.label} (batch {batch})", time.perf_counter() - start))
    base = rows[0][1]
    print(f"model {lm.model_id}, {len(items)} dilemmas ({args.n} per value), form {args.form}")
    print(f"{'setting':<28}{'seconds':>9}{'dilemmas/s':>12}{'x none':>8}")
    for label, secs in rows:
        print(f"{label:<28}{secs:>9.1f}{len(items) / secs:>12.1f}{secs / base:>8.2f}")


if __name__ == "__main__":
    main()
