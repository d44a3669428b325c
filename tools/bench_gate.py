"""Benchmark: the gate search with and without resuming between stages, on one model.

Both runs capture afresh (no activation cache) with the same 10 values' gate queries and
print the wall time, the blocks computed per text, the chosen block and threshold, and
the held-out precision/recall; the second must match the first within 0.02.

Usage: .venv/bin/python tools/bench_gate.py [--model default|qwen2.5-0.5b|qwen2.5-1.5b]
       [--order resume-first]   (the first run may pay for cold weights; alternate)
       [--related-pairs all,50,20]   (instead: held-out precision/recall of the gate
       trained on that many related pairs per value, from one capture at every block)
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


def variants(model: str, pairs: list[int | None]) -> list[dict[str, Any]]:
    """One capture of every gate text at every candidate block, then the gate each number
    of related training pairs per value gives (a search over every candidate: the staged
    search picks the same gate, tests/test_extract.py)."""
    from conva_mlx.data.dataset import ValueData
    from conva_mlx.extraction import gate_candidate_layers, gate_texts
    from conva_mlx.models.loading import load_model
    from conva_mlx.probes.capture import CaptureOptions, capture
    from conva_mlx.values import VALUE_NAMES

    lm = load_model(model)
    data, values = ValueData(), list(VALUE_NAMES)
    layers = gate_candidate_layers(lm.num_layers)
    full = gate_texts(data, values)
    t = time.perf_counter()
    states = capture(lm, full.texts, CaptureOptions(layers=tuple(layers), chat_template=True))
    print(json.dumps({"model": model, "capture_s": round(time.perf_counter() - t, 1),
                      "texts": len(full.texts), "blocks": len(layers)}), flush=True)
    row_of: dict[str, int] = {}
    for i, text in enumerate(full.texts):
        row_of.setdefault(text, i)
    rows = []
    for n in pairs:
        sets = gate_texts(data, values, n)
        gate = sets.fit(states[[row_of[x] for x in sets.texts]], layers)
        rows.append({"model": model, "related_pairs": n or "all", "texts": len(sets.texts),
                     "layer": gate.layer, "threshold": round(gate.threshold, 4),
                     "precision": round(gate.metrics.precision, 4),
                     "recall": round(gate.metrics.recall, 4),
                     "calibration_f1": round(gate.layer_scores[gate.layer], 4)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def staged_variants(model: str, pairs: list[int | None]) -> list[dict[str, Any]]:
    """The extraction's own staged gate search for each number of related pairs (disk
    cache on: a search already run, e.g. by `extract`, is read back), timed."""
    from conva_mlx.data.dataset import ValueData
    from conva_mlx.extraction import ExtractOptions, extract_gate
    from conva_mlx.models.loading import load_model
    from conva_mlx.values import VALUE_NAMES

    lm = load_model(model)
    data, values = ValueData(), list(VALUE_NAMES)
    rows = []
    for n in pairs:
        t = time.perf_counter()
        gate = extract_gate(lm, data, values, ExtractOptions(gate_related_pairs=n), True, None)
        rows.append({"model": model, "related_pairs": n or "all",
                     "seconds": round(time.perf_counter() - t, 1), "layer": gate.layer,
                     "blocks_scored": len(gate.layer_scores),
                     "threshold": round(gate.threshold, 4),
                     "precision": round(gate.metrics.precision, 4),
                     "recall": round(gate.metrics.recall, 4)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--order", choices=["resume-last", "resume-first"], default="resume-last")
    ap.add_argument("--related-pairs", default=None,
                    help="instead: compare these related pairs per value, e.g. all,50,20")
    ap.add_argument("--staged", action="store_true",
                    help="with --related-pairs: run the staged search itself per variant")
    args = ap.parse_args()
    if args.related_pairs:
        pairs = [None if x == "all" else int(x) for x in args.related_pairs.split(",")]
        (staged_variants if args.staged else variants)(args.model, pairs)
        return
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
