"""Benchmark: the gate search with and without resuming between stages, on one model.

Both runs capture afresh (no activation cache) with the same 10 values' gate queries and
print the wall time, the blocks computed per text, the chosen block and threshold, and
the held-out precision/recall; the second must match the first within 0.02.

Usage: .venv/bin/python tools/bench_gate.py [--model default|qwen2.5-0.5b|qwen2.5-1.5b]
       [--order resume-first]   (the first run may pay for cold weights; alternate)
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def run(model: str, order: list[bool]) -> list[dict[str, Any]]:
    from conva_mlx.data.dataset import ValueData
    from conva_mlx.extraction import (
        ExtractOptions,
        extract_gate,
        gate_candidate_layers,
        gate_layer_stages,
    )
    from conva_mlx.models.loading import load_model
    from conva_mlx.values import VALUE_NAMES

    lm = load_model(model)
    data, values = ValueData(), list(VALUE_NAMES)
    stages = gate_layer_stages(gate_candidate_layers(lm.num_layers))
    rows = []
    for resume in order:
        t = time.perf_counter()
        gate = extract_gate(lm, data, values, ExtractOptions(), True, None,
                            use_cache=False, resume=resume)
        seconds = time.perf_counter() - t
        ran = [g for g in stages if g[0] in gate.layer_scores]
        # Blocks computed per text: each stage from the embeddings, or from the last stop.
        blocks = ran[-1][-1] + 1 if resume else sum(g[-1] + 1 for g in ran)
        rows.append({"model": model, "resume": resume, "seconds": round(seconds, 1),
                     "stages": len(ran), "blocks_per_text": blocks, "layer": gate.layer,
                     "threshold": round(gate.threshold, 4),
                     "precision": round(gate.metrics.precision, 4),
                     "recall": round(gate.metrics.recall, 4)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--order", choices=["resume-last", "resume-first"], default="resume-last")
    args = ap.parse_args()
    order = [False, True] if args.order == "resume-last" else [True, False]
    rows = run(args.model, order)
    a, b = rows
    for key in ("precision", "recall"):
        diff = abs(a[key] - b[key])
        print(f"{key}: {a[key]:.4f} vs {b[key]:.4f} (|diff| {diff:.4f}, limit 0.02)")
        assert diff <= 0.02
    assert a["layer"] == b["layer"]
    old, new = (a, b) if not a["resume"] else (b, a)
    print(f"gate search: {old['seconds']:.0f} s -> {new['seconds']:.0f} s; blocks per text "
          f"{old['blocks_per_text']} -> {new['blocks_per_text']}")


if __name__ == "__main__":
    main()
