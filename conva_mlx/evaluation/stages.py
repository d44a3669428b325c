"""The evaluation's stages, each resumable through its JSONL store: generate the replies,
judge them, answer the general-ability questions."""

from __future__ import annotations

from functools import partial

import numpy as np

from conva_mlx.evaluation.batching import batches_by_key
from conva_mlx.evaluation.items import EvalItem
from conva_mlx.evaluation.judges import Judge
from conva_mlx.evaluation.mcq import McqScore, score_mcqs
from conva_mlx.evaluation.methods import GENERAL_METHODS
from conva_mlx.evaluation.results import gen_key, judgement_key
from conva_mlx.evaluation.settings import EvalContext, EvalOptions
from conva_mlx.evaluation.store import JsonlStore
from conva_mlx.progress import progress_bar


def generate_all(ctx: EvalContext, opts: EvalOptions, items: list[EvalItem]) -> JsonlStore:
    """Generate what is missing, a batch of prompts (same method and value) at a time."""
    store = JsonlStore(ctx.out / "generations.jsonl")
    todo = [(m, it) for m in opts.methods for it in items
            if gen_key(m, it.value, it.prompt_id, opts.negative_prompt) not in store]
    batches = batches_by_key([((m, it.value), it) for m, it in todo], opts.batch_size)
    gen = opts.generation()
    done = 0
    with progress_bar(len(todo), "generate", opts.show_progress) as advance:
        for (method, value), chunk in batches:
            cfg = opts.config(method, value, ctx.pack)
            results = ctx.session.generate_batch([it.prompt for it in chunk], cfg, gen)
            for it, r in zip(chunk, results):
                store.append({
                    "key": gen_key(method, it.value, it.prompt_id, opts.negative_prompt),
                    "method": method, "value": it.value, "prompt_id": it.prompt_id,
                    "negative_prompt": opts.negative_prompt, "prompt": it.prompt,
                    "text": r.text, "generated_tokens": len(r.tokens),
                    "gate": {"used": r.gate.used, "open": r.gate.open, "score": r.gate.score},
                    "steered": r.steered, "instruction": r.instruction or None,
                    "delta_norm_mean": round(float(np.mean([x.delta_norm for x in r.layers]))
                                             if r.layers else 0.0, 4),
                    "seconds": round(r.seconds, 3)})
                done += 1
                if ctx.on_generation is not None:
                    ctx.on_generation(done)
            advance(len(chunk))
    return store


def judge_all(ctx: EvalContext, opts: EvalOptions, items: list[EvalItem], gens: JsonlStore,
              judge: Judge) -> JsonlStore:
    """Judge every generation the judge has not read yet, a batch at a time."""
    store = JsonlStore(ctx.out / "judgements.jsonl")
    keys = [gen_key(m, it.value, it.prompt_id, opts.negative_prompt)
            for m in opts.methods for it in items]
    todo = [k for k in keys if judgement_key(judge.name, k) not in store]
    step = opts.batch_size
    with progress_bar(len(todo), "judge", opts.show_progress) as advance:
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            triples = [(gens.records[k]["value"], gens.records[k]["prompt"],
                        gens.records[k]["text"]) for k in chunk]
            verdicts = judge.judge_batch(triples)
            for k, j in zip(chunk, verdicts):
                store.append({"key": judgement_key(judge.name, k), "judge": judge.name,
                              "generation": k, **j.as_dict()})
            advance(len(chunk))
    return store


def general_ability(ctx: EvalContext, opts: EvalOptions) -> dict[str, McqScore]:
    """MCQ accuracy per method; steered methods target the chosen values in turn."""
    methods = [m for m in GENERAL_METHODS if m in opts.methods]
    if not methods:
        return {}
    settings = {m: partial(opts.mcq_config, m) for m in methods}
    return score_mcqs(ctx.session, ctx.data.mcqs()[: opts.mcq_n], settings, opts.values,
                      JsonlStore(ctx.out / "mcq.jsonl"), opts.batch_size, opts.show_progress)
