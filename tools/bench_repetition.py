"""Share of chat replies that fall into a repetition loop (a repeated 8-gram of tokens), per
decoding setting, on the default model: 20 value dilemmas (test half) and 20 value-unrelated
queries, first turn of a chat, the chat's reply length. Side by side in one run.

Usage: .venv/bin/python tools/bench_repetition.py [--model default] [--max-tokens 200]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import conva_mlx  # noqa: E402,F401  (OpenBLAS under MLX before MLX loads)
from conva_mlx.data.dataset import ValueData  # noqa: E402
from conva_mlx.models.loading import load_model  # noqa: E402
from conva_mlx.steering import GenOptions, SteerConfig, SteeringSession  # noqa: E402
from conva_mlx.values import VALUE_NAMES  # noqa: E402

NGRAM = 8
SETTINGS = {"greedy": GenOptions(), "greedy, penalty 1.1": GenOptions(repetition_penalty=1.1),
            "greedy, penalty 1.2": GenOptions(repetition_penalty=1.2),
            "greedy, penalty 1.3": GenOptions(repetition_penalty=1.3)}


def repeats(tokens: list[int], n: int = NGRAM) -> bool:
    seen = set()
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i:i + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False


def prompts(data: ValueData) -> list[str]:
    dilemmas = [d for v in VALUE_NAMES for d in data.dilemmas(v)
                if int(d.id.rsplit("-", 1)[-1]) % 2 == 0][::15][:20]
    unrelated = data.unrelated_queries()[::22][:20]
    return [d.prompt for d in dilemmas] + [q.prompt for q in unrelated]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--only", default=None, help="comma-separated setting names to run")
    args = ap.parse_args()
    lm = load_model(args.model)
    session = SteeringSession(lm)
    qs = prompts(ValueData())
    rows = {}
    wanted = args.only.split(",") if args.only else list(SETTINGS)
    for name, opts in ((n, o) for n, o in SETTINGS.items() if n in wanted):
        results = session.generate_batch(qs, SteerConfig(method="none"),
                                         dataclasses.replace(opts, max_tokens=args.max_tokens))
        loops = [repeats(r.tokens) for r in results]
        rows[name] = {"n": len(loops), "looping": round(sum(loops) / len(loops), 3),
                      "mean_tokens": round(sum(len(r.tokens) for r in results) / len(results), 1),
                      "example": results[0].text[:300]}
        print(f"{name:24s} looping {rows[name]['looping']:.2f} of {len(loops)} "
              f"(mean {rows[name]['mean_tokens']} tokens)", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
