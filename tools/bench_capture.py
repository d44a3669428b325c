"""Benchmark: capture overhead, 4-bit vs float32 decoding, OpenBLAS vs reference BLAS.

Everything is measured side by side in one run on the default model and printed as ratios:
  1. plain batched forward vs `capture` over the same 256 sentences (target overhead <= 10%);
  2. decode tokens/s, 4-bit (quantized) vs float32, and prompt processing time;
  3. the same with and without OpenBLAS preloaded (each config runs in a subprocess, since a
     BLAS preload only takes effect at process start).

Usage: .venv/bin/python tools/bench_capture.py [--sentences 256] [--skip-reference-blas]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from conva_mlx.models.blas import find_openblas, preload_env


def _worker(dtype: str, n_sentences: int, decode_tokens: int, do_capture: bool) -> dict:
    import mlx.core as mx
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    from conva_mlx.data.dataset import ValueData
    from conva_mlx.models.loading import load_model
    from conva_mlx.probes.capture import CaptureOptions, capture
    from conva_mlx.values import VALUE_NAMES

    lm = load_model("default", dtype=dtype)
    data = ValueData()
    texts = [s for v in VALUE_NAMES for p in data.pairs(v) for s in (p.positive, p.negative)]
    texts = texts[:n_sentences]
    out: dict = {"dtype": lm.dtype}
    if do_capture:
        tok = [lm.tokenizer.encode(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(tok[i]))
        batch = 16

        def plain() -> None:
            for s in range(0, len(order), batch):
                ids = [tok[i] for i in order[s:s + batch]]
                width = max(map(len, ids))
                x = mx.array([q + [0] * (width - len(q)) for q in ids])
                mx.eval(lm.model(x))

        def cap() -> None:
            capture(lm, texts, CaptureOptions(batch_size=batch), use_cache=False,
                    show_progress=False)

        plain()  # warm-up
        times = {"plain": [], "capture": []}
        for _ in range(2):  # interleave to share machine noise
            for name, fn in (("plain", plain), ("capture", cap)):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        out["plain_s"] = min(times["plain"])
        out["capture_s"] = min(times["capture"])
        out["tokens"] = sum(len(t) for t in tok)
    prompt = lm.chat_prompt([{"role": "user", "content": "Tell me about the history of tea."}])
    last = None
    for resp in stream_generate(lm.model, lm.tokenizer, prompt, max_tokens=decode_tokens,
                                sampler=make_sampler(temp=0.0)):
        last = resp
    assert last is not None
    out["decode_tps"] = last.generation_tps
    out["prompt_tps"] = last.prompt_tps
    return out


def _run(config: dict, blas: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["HF_HUB_OFFLINE"] = "1"
    env["CONVA_MLX_BLAS"] = "openblas" if blas else "reference"  # OpenBLAS alone, or none
    env = preload_env(env)
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(config)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sentences", type=int, default=256)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--skip-reference-blas", action="store_true")
    ap.add_argument("--worker", default=None)
    args = ap.parse_args()
    if args.worker:
        cfg = json.loads(args.worker)
        print(json.dumps(_worker(cfg["dtype"], cfg["n"], cfg["decode"], cfg["capture"])))
        return
    rows = []
    blas_options = [True] if args.skip_reference_blas or not find_openblas() else [True, False]
    for blas in blas_options:
        for dtype in ("float32", "quantized"):
            cfg = {"dtype": dtype, "n": args.sentences, "decode": args.decode_tokens,
                   "capture": dtype == "float32" and blas}
            r = _run(cfg, blas)
            r["blas"] = "openblas" if blas and find_openblas() else "reference"
            rows.append(r)
            print(f"  done: {r['blas']:9s} {dtype:9s} decode {r['decode_tps']:.1f} tok/s",
                  file=sys.stderr)
    cap = next(r for r in rows if "capture_s" in r)
    print(f"\ncapture vs plain batched forward over {args.sentences} sentences "
          f"({cap['tokens']} tokens, float32, OpenBLAS):")
    print(f"  plain forward {cap['plain_s']:.2f} s, capture {cap['capture_s']:.2f} s, "
          f"overhead {100 * (cap['capture_s'] / cap['plain_s'] - 1):+.1f}% (target <= +10%)")
    print("\ndecoding (SmolLM2-135M, greedy):")
    print(f"  {'BLAS':10s} {'dtype':10s} {'decode tok/s':>13s} {'prompt tok/s':>13s}")
    for r in rows:
        print(f"  {r['blas']:10s} {r['dtype']:10s} {r['decode_tps']:13.1f} "
              f"{r['prompt_tps']:13.1f}")
    by = {(r["blas"], r["dtype"]): r for r in rows}
    if ("openblas", "float32") in by and ("openblas", "quantized") in by:
        ratio = by["openblas", "float32"]["decode_tps"] / by["openblas", "quantized"]["decode_tps"]
        print(f"  float32 / 4-bit decode speed (OpenBLAS): {ratio:.2f}x")
    if ("openblas", "float32") in by and ("reference", "float32") in by:
        ratio = by["openblas", "float32"]["decode_tps"] / by["reference", "float32"]["decode_tps"]
        print(f"  OpenBLAS / reference BLAS float32 decode speed: {ratio:.2f}x")


if __name__ == "__main__":
    main()
