"""`conva-mlx choices`: what steering does to the model's choices (no judge, resumable)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from conva_mlx.cli.options import log, model_option, parse_floats
from conva_mlx.cli.packs import model_and_pack
from conva_mlx.errors import ConvaError
from conva_mlx.evaluation.choices import (
    CHOICE_METHODS,
    CHOICES_RUN,
    FORMS,
    PACK_SETTINGS,
    ChoiceOptions,
    ChoiceRun,
    json_summary,
    parse_settings,
    run_choices,
)
from conva_mlx.steering.config import MODES
from conva_mlx.values import parse_values


def _default_out(model_spec: str, form: str, split: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_spec).name or model_spec).strip("-")
    return Path("runs") / f"choices-{name or 'model'}-{form}-{split}"


@click.command()
@click.option("--pack", "pack_spec", default=None,
              help="Pack directory or hf://REPO_ID. Without it, CAA and ConVA use the model's "
                   "cached pack (extracted once into the user cache, all 10 values).")
@model_option
@click.option("--values", "values_spec", default="all", show_default=True,
              help="'all' or a comma-separated list of values.")
@click.option("--methods", "methods_spec", default="none,ica,caa,conva,calibrated",
              show_default=True,
              help="Comma-separated: " + ", ".join(CHOICE_METHODS)
                   + "; a method may carry its strength ('caa:2', 'conva:0.99', "
                     "'calibrated:1.5', 'ica+calibrated:0.5').")
@click.option("--mode", type=click.Choice(MODES), default=None,
              help="ConVA's mode (default prompt).")
@click.option("--p0", type=float, default=None,
              help="ConVA's P0 for every value (default: the pack's per-value P0).")
@click.option("--caa-coef", type=float, default=None,
              help="CAA's coefficient (default 1).")
@click.option("--strengths", "strengths_spec", default=None,
              help="Sweep: every method with a strength runs at each of these (CAA "
                   "coefficients, ConVA P0s); e.g. --methods caa --strengths 0.5,1,2,4.")
@click.option("--split", type=click.Choice(["test", "calibration"]), default="test",
              show_default=True,
              help="Which half of the dilemmas: report on test, tune on calibration.")
@click.option("--form", type=click.Choice(FORMS), default="likelihood", show_default=True,
              help="likelihood: log p(value action) - log p(competing action) as the reply's "
                   "start; letter: (A)/(B) choice, both orders (for models that can choose).")
@click.option("--n", type=int, default=None, help="At most N dilemmas per value.")
@click.option("--leakage", is_flag=True,
              help="Also score every steered value on every value's dilemmas (10 x 10).")
@click.option("--batch-size", type=int, default=16, show_default=True,
              help="Dilemmas scored together.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Output directory (resumable; default "
                                 "runs/choices-MODEL-FORM-SPLIT).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def choices(pack_spec: str | None, model_spec: str, dtype: str, values_spec: str,
            methods_spec: str, mode: str | None, p0: float | None, caa_coef: float | None,
            strengths_spec: str | None, split: str, form: str, n: int | None, leakage: bool,
            batch_size: int, out_dir: Path | None, as_json: bool) -> None:
    """Shift of the model's choices on held-out dilemmas, per method and value."""
    from conva_mlx.fsutil import check_output_dir
    from conva_mlx.steering import SteeringSession

    values = parse_values(values_spec)
    settings = parse_settings(methods_spec, parse_floats(strengths_spec, "--strengths"),
                              caa_coef, p0)
    if n is not None and n < 1:
        raise ConvaError("--n must be at least 1")
    if batch_size < 1:
        raise ConvaError("--batch-size must be at least 1")
    out = out_dir or _default_out(model_spec, form, split)
    check_output_dir(out, CHOICES_RUN, force=True)  # before loading anything
    needs_pack = any(s.method in PACK_SETTINGS for s in settings)
    lm, pack, pack_path = model_and_pack(pack_spec, model_spec, dtype, needs_pack)
    session = SteeringSession(lm, pack)
    opts = ChoiceOptions(values=values, settings=settings, form=form,  # type: ignore[arg-type]
                         split=split, n=n, mode=mode,  # type: ignore[arg-type]
                         batch_size=batch_size, leakage=leakage, promise=True)
    results = run_choices(ChoiceRun(session, out), opts)
    if as_json:
        click.echo(json.dumps(json_summary(results)))
    else:
        click.echo((out / "results.md").read_text(encoding="utf-8"))
    log(f"pack: {pack_path}" if pack_path else "no pack")
    log(f"wrote {out}/results.json, results.md, shifts.png, profile.png")
