"""`conva-mlx eval`: CSR / FR per value and method, general ability, negative prompts."""

from __future__ import annotations

from pathlib import Path

import click

from conva_mlx.cli.options import log, model_option
from conva_mlx.cli.packs import load_model_for_pack
from conva_mlx.data.dataset import ValueData
from conva_mlx.errors import ConvaError
from conva_mlx.evaluation.judge_registry import DEFAULT_JUDGE, JUDGE_NAMES, make_judge
from conva_mlx.evaluation.judges import Judge, OpenAIJudge
from conva_mlx.evaluation.recipe_pack import ensure_recipe_pack
from conva_mlx.evaluation.runner import (
    EVAL_METHODS,
    EvalContext,
    EvalOptions,
    check_run_dir,
    parse_methods,
    print_table,
    prompt_file_values,
    run_eval,
)
from conva_mlx.models.default_model import DEFAULT_MODEL_ID
from conva_mlx.models.loading import load_model
from conva_mlx.probes.recipe import DIRECTIONS, RECIPES, check_p0, get_recipe
from conva_mlx.sharing.pack_source import resolve_pack_path
from conva_mlx.steering import GenOptions, SteeringSession
from conva_mlx.steering.config import MODES, POSITIONS
from conva_mlx.values import parse_values


@click.command("eval")
@click.option("--pack", "pack_spec", default=None,
              help="Pack directory or hf://REPO_ID (or give --recipe instead).")
@click.option("--recipe", "recipe_name", type=click.Choice(list(RECIPES)), default=None,
              help="Without --pack: extract a pack with this recipe into OUT/pack-RECIPE "
                   "(once; later runs reuse it). With --pack: check the pack was made with it.")
@click.option("--split", type=click.Choice(["test", "calibration"]), default="test",
              show_default=True,
              help="Which half of the dilemmas: report on test, tune on calibration.")
@click.option("--mode", type=click.Choice(list(MODES)), default=None,
              help="ConVA's mode (default prompt: delta measured once from the prompt).")
@click.option("--direction", type=click.Choice(list(DIRECTIONS)), default=None,
              help="ConVA's delta direction (default: the pack recipe's).")
@click.option("--positions", type=click.Choice(list(POSITIONS)), default=None,
              help="Prompt mode: add ConVA's delta at every position (all, default) or only "
                   "from the prompt's last token on (generated).")
@model_option
@click.option("--values", "values_spec", default=None,
              help="'all' or a comma-separated list of values (default: all, or the values "
                   "the --prompts file names).")
@click.option("--methods", "methods_spec", default=",".join(EVAL_METHODS), show_default=True,
              help="Comma-separated: " + ", ".join(EVAL_METHODS) + ".")
@click.option("--negative-prompt", is_flag=True,
              help="Prefix 'You have low level of {value}...' (writes results-neg.*).")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="JSONL of {value, prompt[, id]} instead of the test dilemmas.")
@click.option("--n", type=int, default=None, help="At most N prompts per value.")
@click.option("--judge", "judge_kind", type=click.Choice([*JUDGE_NAMES, "offline"]),
              default=DEFAULT_JUDGE, show_default=True,
              help="offline-v2: stance judge (kappa 0.34 vs readers); offline-v1: the old "
                   "topic judge (kappa 0.07), kept for comparison ('offline' = offline-v1); "
                   "openai: any OpenAI-compatible server.")
@click.option("--judge-base-url", default=None, help="OpenAI-compatible base URL.")
@click.option("--judge-model", default="gpt-4o-mini", show_default=True)
@click.option("--judge-api-key-env", default="OPENAI_API_KEY", show_default=True,
              help="Environment variable with the key; 'none' for local servers.")
@click.option("--max-tokens", type=int, default=64, show_default=True)
@click.option("--temp", type=float, default=0.0, show_default=True)
@click.option("--p0", type=float, default=None,
              help="ConVA strength P0 for every value (default: the pack's per-value P0).")
@click.option("--caa-coef", type=float, default=1.0, show_default=True,
              help="CAA strength: multiplies the mean-difference vectors.")
@click.option("--batch-size", type=int, default=16, show_default=True,
              help="Prompts decoded together (same method and value); 1 = one at a time.")
@click.option("--seed", type=int, default=None)
@click.option("--general/--no-general", default=True, show_default=True,
              help="Multiple-choice general ability for none, conva-nogate, conva.")
@click.option("--mcq-n", type=int, default=None, help="At most N multiple-choice questions.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              required=True)
def eval_command(pack_spec: str | None, recipe_name: str | None, split: str, mode: str | None,
                 direction: str | None, positions: str | None, model_spec: str, dtype: str,
                 values_spec: str | None,
                 methods_spec: str, negative_prompt: bool, prompts_file: Path | None,
                 n: int | None, judge_kind: str, judge_base_url: str | None, judge_model: str,
                 judge_api_key_env: str, max_tokens: int, p0: float | None,
                 caa_coef: float, batch_size: int, temp: float, seed: int | None,
                 general: bool, mcq_n: int | None, out_dir: Path) -> None:
    """Evaluate steering methods on held-out value dilemmas (resumable)."""
    from conva_mlx.packs.pack import load_pack

    if values_spec is None and prompts_file is not None:
        values = prompt_file_values(prompts_file)
    else:
        values = parse_values(values_spec or "all")
    methods = parse_methods(methods_spec)
    GenOptions(max_tokens=max_tokens, temp=temp, seed=seed)  # refuse bad settings up front
    if n is not None and n < 1:
        raise ConvaError("--n must be at least 1")
    if p0 is not None:
        check_p0(p0, "--p0")
    if batch_size < 1:
        raise ConvaError("--batch-size must be at least 1")
    check_run_dir(out_dir)  # before loading anything
    if pack_spec is not None:
        pack_path = resolve_pack_path(pack_spec)
        pack = load_pack(pack_path)
        if recipe_name is not None and pack.recipe.name != recipe_name:
            raise ConvaError(f"{pack_spec} was made with recipe '{pack.recipe.name}', not "
                             f"'{recipe_name}' (leave out --pack to extract one)")
        lm = load_model_for_pack(model_spec, dtype, pack)
    elif recipe_name is not None:
        lm = load_model(model_spec, dtype)
        pack, pack_path = ensure_recipe_pack(lm, get_recipe(recipe_name), out_dir, values,
                                             ValueData(), "conva-uncontrolled" in methods)
        log(f"pack for recipe {recipe_name}: {pack_path}")
    else:
        raise ConvaError("give --pack or --recipe")
    session = SteeringSession(lm, pack)

    name = "offline-v1" if judge_kind == "offline" else judge_kind

    def build_judge() -> Judge:
        log(f"building the {name} judge...")
        # offline-v1 reads with the evaluated model; offline-v2 with the default model
        # (its head is tied to it), which is reused when it is the one evaluated.
        judge_lm = lm if name == "offline-v1" or lm.model_id == DEFAULT_MODEL_ID else None
        return make_judge(name, lm=judge_lm, base_url=judge_base_url, model=judge_model,
                          api_key_env=judge_api_key_env, values=values)

    if name == "openai":  # fail early on a missing key, before generating
        OpenAIJudge(judge_model, judge_base_url, judge_api_key_env)
    opts = EvalOptions(values=values, methods=methods, negative_prompt=negative_prompt, n=n,
                       prompts_file=prompts_file, max_tokens=max_tokens, p0=p0,
                       caa_coef=caa_coef, batch_size=batch_size, temp=temp, seed=seed,
                       general=general, mcq_n=mcq_n, split=split,  # type: ignore[arg-type]
                       mode=mode, direction=direction,  # type: ignore[arg-type]
                       positions=positions)  # type: ignore[arg-type]
    results = run_eval(EvalContext(session, out_dir, build_judge, pack_path), opts)
    print_table(results)
    suffix = "-neg" if negative_prompt else ""
    log(f"wrote {out_dir}/results{suffix}.json, results{suffix}.md, csr{suffix}.png")
