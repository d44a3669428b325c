"""`conva-mlx calibrate`: aim and size the default method's push for a pack, by measurement."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from conva_mlx.cli.options import log, model_option, parse_floats
from conva_mlx.errors import ConvaError


def _default_out(model_spec: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_spec).name or model_spec).strip("-")
    return Path("runs") / f"calibrate-{name or 'model'}"


def _table(cal_json: dict[str, object]) -> str:
    values = cal_json["values"]
    assert isinstance(values, dict)
    strengths = sorted({p["strength"] for v in values.values() for p in v["curve"]})
    head = ("| value | unsteered | " + " | ".join(f"x{s:g}" for s in strengths)
            + " | mix (largest weights) |")
    lines = ["Share of calibration dilemmas favouring the value, by strength "
             "(fluency = change of the actions' log-likelihood, nats):", "",
             head, "|" + "---|" * (len(strengths) + 3)]
    for name, v in values.items():
        by_s = {p["strength"]: p for p in v["curve"]}
        cells = [f"{by_s[s]['favoured']:.2f} ({by_s[s]['fluency']:+.2f})" if s in by_s
                 else "-" for s in strengths]
        mix = sorted(v["mix"].items(), key=lambda kv: -abs(kv[1]))[:3]
        lines.append(f"| {name} | {v['unsteered_favoured']:.2f} | " + " | ".join(cells)
                     + " | " + ", ".join(f"{k} {w:+.2f}" for k, w in mix) + " |")
    return "\n".join(lines)


@click.command()
@click.option("--pack", "pack_spec", default=None,
              help="Pack directory. Without it, the model's cached pack (extracted once).")
@model_option
@click.option("--n", type=int, default=None,
              help="At most N calibration dilemmas per value (default: all 30).")
@click.option("--target-shift", type=float, default=3.0, show_default=True,
              help="Own-dilemma shift (nats of log-likelihood ratio) at strength 1.")
@click.option("--strengths", "strengths_spec", default="0.5,1,1.5", show_default=True,
              help="Strengths whose effect is measured (the curve).")
@click.option("--ridge", type=float, default=None,
              help="Ridge of the mix (relative); default: chosen on split halves.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Scores (resumable; default runs/calibrate-MODEL).")
@click.option("--force", is_flag=True, help="Replace the pack's calibration.json.")
@click.option("--json", "as_json", is_flag=True, help="Print the calibration as JSON.")
def calibrate(pack_spec: str | None, dtype: str, model_spec: str, n: int | None,
              target_shift: float, strengths_spec: str, ridge: float | None,
              batch_size: int, out_dir: Path | None, force: bool, as_json: bool) -> None:
    """Measure how each value's push moves every value's dilemmas (calibration half), fit
    the default method's push per value, measure its strength-to-effect curve, and write
    calibration.json into the pack."""
    from conva_mlx.cli.packs import model_and_pack
    from conva_mlx.evaluation.calibrate import CalibrateOptions, run_calibration
    from conva_mlx.packs.calibration import CALIBRATION_JSON, write_calibration
    from conva_mlx.steering import SteeringSession

    strengths = parse_floats(strengths_spec, "--strengths") or []
    opts = CalibrateOptions(n=n, target_shift=target_shift, strengths=tuple(strengths),
                            ridge=ridge, batch_size=batch_size, say=log)
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
