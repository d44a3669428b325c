"""`conva-mlx calibrate`: aim and size the default method's push for a pack, by measurement."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from conva_mlx.cli.options import log, model_option, parse_floats
from conva_mlx.errors import ConvaError


def _default_out(model_spec: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_spec).name or model_spec).strip("-")
    return Path("runs") / f"calibrate-{name or 'model'}"


def _table(cal_json: dict[str, Any]) -> str:
    blocks = cal_json.get("blocks")
    where = f"blocks {blocks[0]}-{blocks[-1]}" if blocks else "each value's recipe blocks"
    lines = [f"Direction: {cal_json['direction']}, at {where}. Per value: the coefficient "
             "of strength 1 and the measured curve, strength: share of calibration "
             "dilemmas favouring the value (change of the actions' log-likelihood, nats).",
             "",
             "| value | unsteered | coefficient | curve |", "|---|---|---|---|"]
    instructed = []
    for name, v in cal_json["values"].items():
        coef = ", ".join(f"{w:.2f}" if k == name else f"{k} {w:+.2f}"
                         for k, w in v["mix"].items())
        lines.append(f"| {name} | {v['unsteered_favoured']:.2f} | {coef} | "
                     f"{_curve(v['curve'])} |")
        if "instructed" in v:
            inst = v["instructed"]
            instructed.append(f"| {name} | {inst['favoured']:.2f} | {_curve(inst['curve'])} |")
    if instructed:
        lines += ["", "With ICA's instruction before the question (calibrate --instruct): the "
                  "share with the instruction alone, then the same pushes with it.", "",
                  "| value | instruction alone | curve |", "|---|---|---|", *instructed]
    how = "ICA's instruction + the push" if cal_json.get("instruct") else "the push alone"
    lines += ["", f"Default: {how} at strength {cal_json.get('strength', 1.0):g}."]
    return "\n".join(lines)


def _curve(points: list[dict[str, float]]) -> str:
    return ", ".join(f"x{p['strength']:.2g}: {p['favoured']:.2f} ({p['fluency']:+.1f})"
                     for p in points)


@click.command()
@click.option("--pack", "pack_spec", default=None,
              help="Pack directory. Without it, the model's cached pack (extracted once).")
@model_option
@click.option("--n", type=int, default=None,
              help="At most N calibration dilemmas per value (default: all 30).")
@click.option("--target-shift", type=float, default=1.5, show_default=True,
              help="Own-dilemma shift (nats of log-likelihood ratio) at strength 1.")
@click.option("--coefs", "coefs_spec", default="0.25,0.5,1,1.5", show_default=True,
              help="Coefficients of the dose-response (multiples of each value's vector).")
@click.option("--fluency-floor", type=float, default=-4.0, show_default=True,
              help="Most the written actions' log-likelihood may drop (nats).")
@click.option("--blocks", type=click.Choice(["band", "recipe"]), default="band",
              show_default=True,
              help="band: every value at the blocks 30%-70% of the depth; recipe: the "
                   "pack's blocks for each value.")
@click.option("--instruct", is_flag=True,
              help="Also measure each push with ICA's instruction before the question, so "
                   "that `generate --instruct` shows an expected effect too.")
@click.option("--default-strength", type=float, default=None,
              help="The strength requests get when they give none (1 = the calibrated "
                   "push): record the size blind readers chose on the calibration half, "
                   "e.g. 0.5 with --instruct on Qwen2.5-0.5B. Default: 1, or the kept "
                   "calibration's with --keep-sizes.")
@click.option("--keep-sizes", is_flag=True,
              help="Keep the pack's calibrated sizes and measure only the strength-to-effect "
                   "curve again (e.g. on more dilemmas with --n); --coefs are then "
                   "strengths, multiples of the calibrated push.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Scores (resumable; default runs/calibrate-MODEL).")
@click.option("--force", is_flag=True, help="Replace the pack's calibration.json.")
@click.option("--json", "as_json", is_flag=True, help="Print the calibration as JSON.")
def calibrate(pack_spec: str | None, dtype: str, model_spec: str, n: int | None,
              target_shift: float, coefs_spec: str, fluency_floor: float, blocks: str,
              instruct: bool, default_strength: float | None, keep_sizes: bool,
              batch_size: int,
              out_dir: Path | None, force: bool, as_json: bool) -> None:
    """Measure each value's dose-response on the calibration half of the dilemmas, size the
    default method's push per value (the smallest that reaches the target shift and stays
    fluent), and write calibration.json (with the strength-to-effect curve) into the pack."""
    from conva_mlx.cli.packs import model_and_pack
    from conva_mlx.evaluation.calibrate import CalibrateOptions, run_calibration
    from conva_mlx.packs.calibration import CALIBRATION_JSON, write_calibration
    from conva_mlx.steering import SteeringSession

    coefs = parse_floats(coefs_spec, "--coefs") or []
    opts = CalibrateOptions(n=n, target_shift=target_shift, coefs=tuple(coefs),
                            fluency_floor=fluency_floor, blocks=blocks, instruct=instruct,
                            default_strength=default_strength, keep_sizes=keep_sizes,
                            batch_size=batch_size, say=log)
    if batch_size < 1:
        raise ConvaError("--batch-size must be at least 1")
    if pack_spec is not None and not pack_spec.startswith("hf://"):
        target = Path(pack_spec) / CALIBRATION_JSON
        if target.exists() and not force:  # before loading anything
            raise ConvaError(f"{target} exists; pass --force to replace it")
    lm, pack, pack_path = model_and_pack(pack_spec, model_spec, dtype, needs_pack=True)
    assert pack is not None and pack_path is not None
    out = out_dir or _default_out(model_spec)
    cal = run_calibration(SteeringSession(lm, pack), out, opts)
    path = write_calibration(cal, pack_path, force=force)
    text = cal.to_json()
    (out / "calibration.md").write_text(_table(text) + "\n", encoding="utf-8")
    if as_json:
        click.echo(json.dumps(text))
    else:
        click.echo(_table(text))
    log(f"wrote {path} (scores in {out})")
