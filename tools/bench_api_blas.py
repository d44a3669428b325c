"""Benchmark: the README's Python API example from a plain interpreter vs the CLI's way.

Each round runs the example (load the default model, extract one value, a 40-token steered
reply, a 100-token plain reply) in three fresh interpreters, interleaved:
  plain     - `python script.py`, nothing set: `import conva_mlx` loads OpenBLAS in-process
  preload   - LD_PRELOAD set as the CLI sets it (the shim and OpenBLAS)
  reference - CONVA_MLX_BLAS=reference: MLX's own reference BLAS (what plain python got before)
Prints per configuration how many products the GEMV shim forwarded (0: OpenBLAS is not in
front), the median seconds of each stage and decode tok/s, and the ratios
plain / preload and reference / plain. Target: plain within noise of preload (ratio ~1.0).

Usage: .venv/bin/python tools/bench_api_blas.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EXAMPLE = r'''
import json, sys, time
t0 = time.perf_counter()
import conva_mlx as cm
from conva_mlx.models.blas import gemv_forwarded_calls
lm = cm.load_model()
t1 = time.perf_counter()
pack = cm.extract(lm, "benevolence")
t2 = time.perf_counter()
session = cm.SteeringSession(lm, pack)
session.generate("My neighbour asked me to help her move house on Saturday, but I had plans. "
                 "Should I help?", cm.SteerConfig("benevolence"), cm.GenOptions(max_tokens=40))
t3 = time.perf_counter()
plain = session.generate("Tell me about the history of Rome.", cm.SteerConfig(method="none"),
                         cm.GenOptions(max_tokens=100))
t4 = time.perf_counter()
print(json.dumps({"shim_calls": gemv_forwarded_calls() or 0, "load": t1 - t0, "extract": t2 - t1,
                  "steered_40": t3 - t2, "plain_100": t4 - t3, "total": t4 - t0,
                  "tok_s": plain.generation_tps}))
'''


def _env(kind: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "CONVA_MLX_BLAS")}
    env["HF_HUB_OFFLINE"] = "1"
    if kind == "preload":
        libs = subprocess.run([sys.executable, "-m", "conva_mlx.models.blas"], env=env,
                              capture_output=True, text=True, check=True).stdout.strip()
        env["LD_PRELOAD"] = libs
    elif kind == "reference":
        env["CONVA_MLX_BLAS"] = "reference"
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    kinds = ("plain", "preload", "reference")
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "api_example.py"
        script.write_text(EXAMPLE)
        for r in range(args.rounds):
            for kind in kinds:
                out = subprocess.run([sys.executable, str(script)], env=_env(kind), cwd=tmp,
                                     capture_output=True, text=True, check=True).stdout
                runs[kind].append(json.loads(out.strip().splitlines()[-1]))
                print(f"round {r + 1}/{args.rounds} {kind}: {runs[kind][-1]}", flush=True)
    stages = ("load", "extract", "steered_40", "plain_100", "total", "tok_s")
    med = {k: {s: statistics.median(x[s] for x in runs[k]) for s in stages} for k in kinds}
    print("\n| config | GEMVs through the shim | " + " | ".join(stages) + " |")
    print("|---|---|" + "---|" * len(stages))
    for k in kinds:
        print(f"| {k} | {runs[k][-1]['shim_calls']} | "
              + " | ".join(f"{med[k][s]:.1f}" for s in stages) + " |")
    plain, preload = med["plain"], med["preload"]
    print(f"\nplain / preload (total seconds): {plain['total'] / preload['total']:.2f}"
          f"; tok/s plain / preload: {plain['tok_s'] / preload['tok_s']:.2f}")
    print(f"reference / plain (total seconds): "
          f"{med['reference']['total'] / med['plain']['total']:.2f}")


if __name__ == "__main__":
    main()
