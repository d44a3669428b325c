"""How a pack's gate treats queries beyond dilemma wording (the held-out part of
gate/beyond_dilemmas.jsonl): open rate per kind, precision and recall.

    python tools/gate_beyond.py --pack packs/smollm2 [--all]

Works for packs made before these queries joined the gate's data (to compare old and new
gates on the same held-out queries); --all scores every query, not only the test part.
"""

from __future__ import annotations

import argparse
import json

from conva_mlx.data.dataset import ValueData
from conva_mlx.models.loading import load_model
from conva_mlx.packs.pack import load_pack
from conva_mlx.probes.capture import CaptureOptions, capture
from conva_mlx.probes.gate import kind_report, kind_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--all", action="store_true", help="score every query, not the test part")
    args = ap.parse_args()
    pack = load_pack(args.pack)
    if pack.gate is None:
        raise SystemExit(f"{args.pack} has no gate")
    lm = load_model(args.model, "auto")
    pack.check_model(lm.model_id, lm.fingerprint)
    queries = ValueData().gate_queries()
    chosen = [q for q in queries if not q.related or q.value in pack.values]
    idx = list(range(len(chosen))) if args.all else kind_split([q.kind for q in chosen])[2]
    texts = [chosen[i].prompt for i in idx]
    states = capture(lm, texts, CaptureOptions(layers=(pack.gate.layer,), chat_template=True),
                     show_progress=False)[:, 0]
    opened = pack.gate.scores(states) >= pack.gate.threshold
    report = kind_report([chosen[i].kind for i in idx], opened)
    print(json.dumps(report, indent=1))
    missed = [chosen[i].prompt for i, o in zip(idx, opened) if o != chosen[i].related]
    for prompt in missed:
        print("wrong:", prompt)


if __name__ == "__main__":
    main()
