"""`conva-mlx generate`: steered generation with diagnostics."""

from __future__ import annotations

import json
import sys

import click

from conva_mlx.cli.options import check_text, model_option
from conva_mlx.cli.packs import load_model_for_pack
from conva_mlx.sharing.pack_source import open_pack
from conva_mlx.steering import METHODS, MODES, GenOptions, SteerConfig, SteeringSession, Target


@click.command()
@click.option("--pack", "pack_spec", required=True, help="Pack directory or hf://REPO_ID.")
@model_option
@click.option("--value", "values", multiple=True, help="Steer toward VALUE[:P0] (repeatable).")
@click.option("--away", "aways", multiple=True, help="Steer away from VALUE[:P0] (repeatable).")
@click.option("--mode", type=click.Choice(MODES), default="prompt", show_default=True)
@click.option("--no-gate", is_flag=True, help="Steer even if the query is not value-related.")
@click.option("--method", type=click.Choice(METHODS), default="conva", show_default=True)
@click.option("--probes", type=click.Choice(["controlled", "uncontrolled"]),
              default="controlled", show_default=True,
              help="uncontrolled: probes from the uncontrolled pairs (the ablation).")
@click.option("--caa-coef", type=float, default=1.0, show_default=True)
@click.option("--negative-prompt", is_flag=True,
              help="Prepend 'You have low level of {value}...' to the message.")
@click.option("--max-tokens", type=int, default=200, show_default=True)
@click.option("--temp", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end.")
@click.argument("prompt")
def generate(pack_spec: str, model_spec: str, dtype: str, values: tuple[str, ...],
             aways: tuple[str, ...], mode: str, no_gate: bool, method: str, probes: str,
             caa_coef: float, negative_prompt: bool, max_tokens: int, temp: float,
             seed: int | None, as_json: bool, prompt: str) -> None:
    """Generate a reply to PROMPT, steered toward (or away from) values."""
    check_text(prompt, "the prompt")
    # Settings first: a bad option fails in a second, not after loading the model.
    targets = [Target.parse(v) for v in values] + [Target.parse(v, away=True) for v in aways]
    cfg = SteerConfig(targets=targets, method=method, mode=mode,  # type: ignore[arg-type]
                      gate=not no_gate, probes=probes, caa_coef=caa_coef,  # type: ignore[arg-type]
                      negative_prompt=negative_prompt)
    opts = GenOptions(max_tokens=max_tokens, temp=temp, seed=seed)
    pack = open_pack(pack_spec)
    lm = load_model_for_pack(model_spec, dtype, pack)
    session = SteeringSession(lm, pack)

    def stream(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    result = session.generate(prompt, cfg, opts, on_text=None if as_json else stream)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        click.echo("")
        click.secho(result.summary(), dim=True, err=True)
