"""Evaluation runner: control success (CSR), fluency (FR), general ability, with resume.

Stages (`stages.py`), each resumable (records are appended with flush + fsync; a rerun skips
what is done):
1. generations  -> DIR/generations.jsonl, keyed by (method, value, prompt id, negative flag)
2. judgements   -> DIR/judgements.jsonl, keyed by the generation key and the judge's name
3. general ability (MCQs; GENERAL_METHODS) -> DIR/mcq.jsonl
4. metrics      -> DIR/results.json, DIR/results.md, DIR/csr.png
                   (with --negative-prompt: results-neg.json, results-neg.md, csr-neg.png)
Test prompts: the even-numbered ("test") half of each value's dilemmas (the gate threshold
was calibrated on the odd half), or a JSONL file of {"value", "prompt"[, "id"]} records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conva_mlx.errors import ConvaError
from conva_mlx.evaluation.items import load_items
from conva_mlx.evaluation.results import (
    EvalResults,
    compute_metrics,
    mean_row,
    render_markdown,
)
from conva_mlx.evaluation.settings import EvalContext, EvalOptions, generation_settings
from conva_mlx.evaluation.stages import general_ability, generate_all, judge_all
from conva_mlx.evaluation.store import saved_settings
from conva_mlx.fsutil import (
    OutputKind,
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    sha256_file,
)

EVAL_RUN = OutputKind("conva-mlx eval run", "run.json", ())


def check_run_dir(out: Path) -> Path:
    """An evaluation writes into a new or empty folder, or resumes one that holds a run
    (run.json) or only a recipe's pack-* folder; any other folder, or a file, is refused
    so that no file of the user's is replaced."""
    out = Path(out).expanduser()
    own = out.is_dir() and all(p.name.startswith("pack-") and p.is_dir()
                               for p in out.iterdir())
    if own and any(out.iterdir()):
        return out
    return check_output_dir(out, EVAL_RUN, force=True)


# Settings added after runs were made: what those runs used.
LEGACY_SETTINGS: dict[str, Any] = {"strength": 1.0, "repetition_penalty": 1.0}


def check_run_settings(ctx: EvalContext, opts: EvalOptions) -> None:
    """Refuse to mix generations made with other settings into one output directory."""
    want = generation_settings(ctx, opts)
    have = saved_settings(ctx.out / "run.json", want)
    if have is not None:
        have = {**LEGACY_SETTINGS, **have}
        diff = [f"{k}={have.get(k)!r} (now {v!r})" for k, v in want.items()
                if have.get(k) != v]
        if diff:
            raise ConvaError(f"{ctx.out} holds generations made with other settings: "
                             + ", ".join(diff) + "; use another --out or the same settings")


def _check_pack(ctx: EvalContext, opts: EvalOptions) -> None:
    for m in opts.methods:
        if m == "conva-uncontrolled":
            for v in opts.values:
                if ctx.pack.value(v).uncontrolled is None:
                    raise ConvaError(f"the pack has no non-context-controlled probes for {v}")
        if m != "none":
            for v in opts.values:
                ctx.pack.value(v)


def _prompts_label(opts: EvalOptions) -> str:
    if opts.prompts_file:
        return str(opts.prompts_file)
    return ("calibration dilemmas (odd half)" if opts.split == "calibration"
            else "test dilemmas (even half)")


def run_eval(ctx: EvalContext, opts: EvalOptions) -> EvalResults:
    """Run (or resume) the evaluation; write and return the results."""
    opts.check()
    opts.strength = opts.strength_for(ctx.pack)  # the pack's default, recorded as a number
    if opts.negative_prompt:
        opts.general = False
    _check_pack(ctx, opts)
    items = load_items(opts.values, opts.n, opts.prompts_file, ctx.data, opts.split)
    check_run_dir(ctx.out)
    ctx.out.mkdir(parents=True, exist_ok=True)
    check_run_settings(ctx, opts)
    gens = generate_all(ctx, opts, items)
    judge = ctx.judge_factory()
    judgements = judge_all(ctx, opts, items, gens, judge)
    general = general_ability(ctx, opts) if opts.general else {}
    table = compute_metrics(opts.methods, opts.negative_prompt, items, gens, judgements,
                            judge.name)
    lm = ctx.session.lm
    pack_json = ctx.pack_path / "pack.json" if ctx.pack_path is not None else None
    results = EvalResults(
        model={"id": lm.model_id, "fingerprint": lm.fingerprint},
        pack={"path": str(ctx.pack_path) if ctx.pack_path else None,
              "pack_json_sha256": sha256_file(pack_json)
              if pack_json is not None and pack_json.is_file() else None},
        dataset_hash=ctx.data.digest(),
        prompts=_prompts_label(opts),
        recipe=ctx.pack.recipe.to_json(),
        settings={"max_tokens": opts.max_tokens, "temp": opts.temp, "seed": opts.seed,
                  "repetition_penalty": opts.repetition_penalty,
                  "p0": opts.p0, "caa_coef": opts.caa_coef, "strength": opts.strength,
                  "mode": opts.mode or "prompt",
                  "direction": opts.direction or ctx.pack.recipe.direction,
                  "positions": opts.positions or "all", "split": opts.split, "n": opts.n,
                  "negative_prompt": opts.negative_prompt, "methods": opts.methods},
        judge=judge.describe(), values=table, mean=mean_row(table), general_ability=general)
    suffix = "-neg" if opts.negative_prompt else ""
    atomic_write_json(ctx.out / f"results{suffix}.json", results.to_json())
    atomic_write_text(ctx.out / f"results{suffix}.md", render_markdown(results))
    from conva_mlx.plots import plot_bars

    bars = {v: {m: c.csr for m, c in row.items() if c.csr is not None}
            for v, row in table.items()}
    if any(bars.values()):
        plot_bars(bars, ctx.out / f"csr{suffix}.png", "Control success rate", "CSR")
    return results
