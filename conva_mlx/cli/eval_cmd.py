"""`conva-mlx eval`: CSR / FR per value and method, general ability, negative prompts."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import click

from conva_mlx.cli.options import log, model_option
from conva_mlx.cli.packs import load_model_for_pack
from conva_mlx.data.dataset import ValueData
from conva_mlx.errors import ConvaError
from conva_mlx.evaluation.items import prompt_file_values
from conva_mlx.evaluation.judge_registry import DEFAULT_JUDGE, JUDGE_NAMES, make_judge
from conva_mlx.evaluation.judges import Judge, OpenAIJudge
from conva_mlx.evaluation.methods import EVAL_METHODS, GENERAL_METHODS, parse_methods
from conva_mlx.evaluation.recipe_pack import ensure_recipe_pack
from conva_mlx.evaluation.results import EvalResults, fmt, judge_card_text
from conva_mlx.evaluation.runner import check_run_dir, run_eval
from conva_mlx.evaluation.settings import EvalContext, EvalOptions
from conva_mlx.models.default_model import DEFAULT_MODEL_ID
from conva_mlx.models.loading import LoadedModel, load_model
from conva_mlx.packs.pack import Pack
from conva_mlx.probes.recipe import DIRECTIONS, RECIPES, get_recipe
from conva_mlx.sharing.pack_source import resolve_pack_path
from conva_mlx.steering import SteeringSession
from conva_mlx.steering.config import CHAT_SAMPLING, MODES, POSITIONS
from conva_mlx.values import parse_values

# The command's options that are EvalOptions fields, passed through by name.
_OPTION_FIELDS = {f.name for f in fields(EvalOptions)} - {"values", "methods", "show_progress"}


@dataclass(frozen=True)
class JudgeChoice:
    """Which judge reads the replies (--judge and its server settings)."""
    kind: str
    base_url: str | None
    model: str
    api_key_env: str

    @property
    def name(self) -> str:
        return "offline-v1" if self.kind == "offline" else self.kind

    def check(self) -> None:
        if self.name == "openai":  # fail early on a missing key, before generating
            OpenAIJudge(self.model, self.base_url, self.api_key_env)

    def build(self, lm: LoadedModel, values: list[str]) -> Judge:
        log(f"building the {self.name} judge...")
        # offline-v1 reads with the evaluated model; offline-v2 with the default model
        # (its head is tied to it), which is reused when it is the one evaluated.
        judge_lm = lm if self.name == "offline-v1" or lm.model_id == DEFAULT_MODEL_ID else None
        return make_judge(self.name, lm=judge_lm, base_url=self.base_url, model=self.model,
                          api_key_env=self.api_key_env, values=values)


def _load(pack_spec: str | None, recipe_name: str | None, model_spec: str, dtype: str,
          opts: EvalOptions, out_dir: Path) -> tuple[LoadedModel, Pack, Path]:
    """The model and the pack: a given pack, or one extracted with --recipe into OUT."""
    from conva_mlx.packs.pack import load_pack

    if pack_spec is not None:
        pack_path = resolve_pack_path(pack_spec)
        pack = load_pack(pack_path)
        if recipe_name is not None and pack.recipe.name != recipe_name:
            raise ConvaError(f"{pack_spec} was made with recipe '{pack.recipe.name}', not "
                             f"'{recipe_name}' (leave out --pack to extract one)")
        return load_model_for_pack(model_spec, dtype, pack), pack, pack_path
    if recipe_name is None:
        raise ConvaError("give --pack or --recipe")
    lm = load_model(model_spec, dtype)
    pack, pack_path = ensure_recipe_pack(lm, get_recipe(recipe_name), out_dir, opts.values,
                                         ValueData(), "conva-uncontrolled" in opts.methods)
    log(f"pack for recipe {recipe_name}: {pack_path}")
    return lm, pack, pack_path


def print_table(results: EvalResults) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # logs and pipes: do not wrap the table at 80 columns
        console = Console(width=160)
    methods = list(results.mean)
    t = Table(title="CSR / FR per value and method")
    t.add_column("value")
    for m in methods:
        t.add_column(m, justify="center")
    for v, row in results.values.items():
        t.add_row(v, *(f"{fmt(row[m].csr)} / {fmt(row[m].fr)}" for m in methods))
    t.add_row("[bold]mean", *(f"[bold]{fmt(results.mean[m].csr)} / "
                              f"{fmt(results.mean[m].fr)}" for m in methods))
    console.print(t)
    if results.general_ability:
        g = Table(title="General ability (MCQ accuracy)")
        for c in ("method", "accuracy", "n", "gate open"):
            g.add_column(c)
        for m, r in results.general_ability.items():
            g.add_row(m, fmt(r.accuracy), str(r.n), fmt(r.gate_open_rate))
        console.print(g)
    j = results.judge
    console.print(f"value judge: {j.get('name', j['kind'])}{judge_card_text(j)}")
    unparse = sum(c.value_unparseable + c.fluency_unparseable
                  for r in results.values.values() for c in r.values())
    if unparse:
        console.print(f"[yellow]{unparse} judge answers could not be parsed (excluded)")


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
@click.option("--strength", type=float, default=None,
              help="calibrated / ica+calibrated: 1 = the calibrated push (default: the "
                   "pack's default strength, what users get: 1, or 0.5 on Qwen2.5-0.5B).")
@click.option("--batch-size", type=int, default=16, show_default=True,
              help="Prompts decoded together (same method and value); 1 = one at a time.")
@click.option("--seed", type=int, default=None)
@click.option("--repetition-penalty", type=float,
              default=CHAT_SAMPLING.repetition_penalty, show_default=True,
              help="> 1 makes repeated tokens less likely (1 = off). The default decodes as "
                   "the chat, the server and generate do; runs made before it used 1.")
@click.option("--general/--no-general", default=True, show_default=True,
              help="Multiple-choice general ability for " + ", ".join(GENERAL_METHODS) + ".")
@click.option("--mcq-n", type=int, default=None, help="At most N multiple-choice questions.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              required=True)
def eval_command(pack_spec: str | None, recipe_name: str | None, model_spec: str, dtype: str,
                 values_spec: str | None, methods_spec: str, out_dir: Path,
                 **params: Any) -> None:
    """Evaluate steering methods on held-out value dilemmas (resumable)."""
    judge = JudgeChoice(params.pop("judge_kind"), params.pop("judge_base_url"),
                        params.pop("judge_model"), params.pop("judge_api_key_env"))
    prompts_file = params["prompts_file"]
    values = (prompt_file_values(prompts_file) if values_spec is None and prompts_file
              else parse_values(values_spec or "all"))
    opts = EvalOptions(values=values, methods=parse_methods(methods_spec),
                       **{k: params[k] for k in _OPTION_FIELDS})
    opts.check()  # bad settings fail here, before anything is loaded
    check_run_dir(out_dir)
    judge.check()
    lm, pack, pack_path = _load(pack_spec, recipe_name, model_spec, dtype, opts, out_dir)
    ctx = EvalContext(SteeringSession(lm, pack), out_dir, lambda: judge.build(lm, values),
                      pack_path)
    print_table(run_eval(ctx, opts))
    suffix = "-neg" if opts.negative_prompt else ""
    log(f"wrote {out_dir}/results{suffix}.json, results{suffix}.md, csr{suffix}.png")
