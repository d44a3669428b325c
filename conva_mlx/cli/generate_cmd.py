"""`conva-mlx generate`: steered generation with diagnostics."""

from __future__ import annotations

import json
import sys

import click

from conva_mlx.cli.options import check_text, model_option
from conva_mlx.cli.packs import model_and_pack
from conva_mlx.errors import ConvaError
from conva_mlx.steering import METHODS, MODES, GenOptions, SteerConfig, SteeringSession, Target
from conva_mlx.steering.config import CHAT_SAMPLING, DEFAULT_METHOD
from conva_mlx.steering.engine import PACK_METHODS


@click.command()
@click.option("--pack", "pack_spec", default=None,
              help="Pack directory or hf://REPO_ID (default: the model's cached pack; "
                   "none and ica need no pack).")
@model_option
@click.option("--value", "values", multiple=True,
              help="Steer toward VALUE[:LEVEL] (repeatable). LEVEL: for the calibrated "
                   "method the share of held-out dilemmas that should favour the value "
                   "(e.g. benevolence:0.8); for conva the probe's P0.")
@click.option("--away", "aways", multiple=True, help="Steer away from VALUE[:P0] (repeatable).")
@click.option("--mode", type=click.Choice(MODES), default="prompt", show_default=True,
              help="ConVA's mode.")
@click.option("--no-gate", is_flag=True, help="Steer even if the query is not value-related.")
@click.option("--method", type=click.Choice(METHODS), default=DEFAULT_METHOD, show_default=True,
              help="calibrated: the gated push sized by the pack's calibration (the "
                   "default); conva: the paper's minimal probe push; caa: the mean "
                   "difference x --caa-coef; ica: an instruction; none: unsteered.")
@click.option("--strength", type=float, default=None,
              help="calibrated: a multiple of the calibrated push (default: the pack's, the "
                   "size blind readers chose: 0.5 on Qwen2.5-0.5B, else 1).")
@click.option("--effect", type=float, default=None,
              help="calibrated: the share of held-out dilemmas that should favour each value "
                   "(the strength is read off the pack's calibration curve).")
@click.option("--probes", type=click.Choice(["controlled", "uncontrolled"]),
              default="controlled", show_default=True,
              help="uncontrolled: probes from the uncontrolled pairs (the ablation).")
@click.option("--caa-coef", type=float, default=1.0, show_default=True)
@click.option("--instruct/--no-instruct", default=None,
              help="calibrated/conva: also put ICA's instruction ('You have high level of "
                   "{value}...') before the question, only where the gate opens. Default: "
                   "the pack's (on for the calibrated method where its calibration was "
                   "measured with the instruction, as for the default model).")
@click.option("--negative-prompt", is_flag=True,
              help="Prepend 'You have low level of {value}...' to the message.")
@click.option("--max-tokens", type=int, default=200, show_default=True)
@click.option("--temp", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--repetition-penalty", type=float,
              default=CHAT_SAMPLING.repetition_penalty, show_default=True,
              help="> 1 makes recently generated tokens less likely (1 = off). The default "
                   "is the chat's and the server's, the decoding the default was read in.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end.")
@click.argument("prompt")
def generate(pack_spec: str | None, model_spec: str, dtype: str, values: tuple[str, ...],
             aways: tuple[str, ...], mode: str, no_gate: bool, method: str,
             strength: float | None,
             effect: float | None, probes: str,
             caa_coef: float, instruct: bool | None, negative_prompt: bool, max_tokens: int,
             temp: float,
             seed: int | None, repetition_penalty: float, as_json: bool, prompt: str
             ) -> None:
    """Generate a reply to PROMPT, steered toward (or away from) values."""
    check_text(prompt, "the prompt")
    # Settings first: a bad option fails in a second, not after loading the model.
    targets = [Target.parse(v) for v in values] + [Target.parse(v, away=True) for v in aways]
    if effect is not None:
        if method != "calibrated":
            raise ConvaError("--effect sets the calibrated method's strength (use "
                             "--method calibrated)")
        targets = [Target(t.value, effect if t.p0 is None else t.p0, t.away) for t in targets]
    cfg = SteerConfig(targets=targets, method=method, mode=mode,  # type: ignore[arg-type]
                      gate=not no_gate, probes=probes, caa_coef=caa_coef,  # type: ignore[arg-type]
                      negative_prompt=negative_prompt, strength=strength, instruct=instruct)
    opts = GenOptions(max_tokens=max_tokens, temp=temp, seed=seed,
                      repetition_penalty=repetition_penalty)
    lm, pack, _ = model_and_pack(pack_spec, model_spec, dtype, method in PACK_METHODS)
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
