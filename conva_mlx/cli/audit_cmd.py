"""`conva-mlx audit`: a model's value report, one self-contained page (and its numbers)."""

from __future__ import annotations

import gc
import re
from pathlib import Path
from typing import Any

import click

from conva_mlx.cli.options import log, model_option
from conva_mlx.errors import ConvaError


def _default_out(model_spec: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_spec).name or model_spec).strip("-")
    return Path("runs") / f"audit-{name or 'model'}"


@click.command()
@model_option
@click.option("--pack", "pack_spec", default=None,
              help="Pack directory or hf://REPO_ID (default: the model's cached pack, "
                   "extracted once with all 10 values).")
@click.option("--compare", "compare_spec", default=None,
              help="A second model to audit beside the first (same figures side by side).")
@click.option("--compare-pack", "compare_pack_spec", default=None,
              help="The second model's pack (default: its cached pack).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Output directory (resumable; default runs/audit-MODEL).")
@click.option("--quick", is_flag=True,
              help="A first look: 6 test dilemmas per value instead of all 30.")
@click.option("--n", type=int, default=None, help="At most N test dilemmas per value.")
@click.option("--methods", "methods_spec", default=None,
              help="Dose-response settings, e.g. 'calibrated:0.5,calibrated:1,caa:1,"
                   "conva:0.99' (default: calibrated 0.5/1/2, CAA 0.5/1/2, ConVA P0 "
                   "0.9/0.99).")
@click.option("--mcq-n", type=int, default=None,
              help="At most N general-ability questions (default all 180).")
@click.option("--batch-size", type=int, default=16, show_default=True,
              help="Dilemmas scored together.")
def audit(model_spec: str, dtype: str, pack_spec: str | None, compare_spec: str | None,
          compare_pack_spec: str | None, out_dir: Path | None, quick: bool, n: int | None,
          methods_spec: str | None, mcq_n: int | None, batch_size: int) -> None:
    """What a model values, how it encodes them, how far each moves and what else moves.

    Writes OUT/report.html (one self-contained page), OUT/report.json (every figure's
    numbers) and the PNGs; scores are kept under OUT/scores-* so an interrupted audit
    resumes where it stopped."""
    from conva_mlx.evaluation.audit import (
        AUDIT_FORMAT_VERSION,
        AUDIT_RUN,
        DOSE_SETTINGS,
        QUICK_MCQ,
        QUICK_N,
        AuditOptions,
        compare_reports,
    )
    from conva_mlx.evaluation.audit_page import write_page
    from conva_mlx.evaluation.choices import parse_settings
    from conva_mlx.fsutil import atomic_write_json, check_output_dir

    if compare_pack_spec is not None and compare_spec is None:
        raise ConvaError("--compare-pack needs --compare (the second model)")
    if quick and n is not None:
        raise ConvaError("--quick and --n both set the dilemmas per value; give one")
    for name, x in (("--n", n), ("--mcq-n", mcq_n), ("--batch-size", batch_size)):
        if x is not None and x < 1:
            raise ConvaError(f"{name} must be at least 1")
    dose = parse_settings(methods_spec or DOSE_SETTINGS)
    if not any(s.steers for s in dose):
        raise ConvaError("--methods needs at least one steering method with a strength")
    out = out_dir or _default_out(model_spec)
    check_output_dir(out, AUDIT_RUN, force=True)  # a new folder, or an audit's (resumed)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / AUDIT_RUN.manifest, {"format": "conva-mlx-audit-run"})
    opts = AuditOptions(n=QUICK_N if quick else n, dose=[s for s in dose if s.steers],
                        mcq_n=QUICK_MCQ if quick and mcq_n is None else mcq_n,
                        batch_size=batch_size)
    reports = [_audit_one(model_spec, pack_spec, dtype, out, opts)]
    if compare_spec is not None:
        reports.append(_audit_one(compare_spec, compare_pack_spec, dtype, out, opts))
    report: dict[str, Any] = {"format": "conva-mlx-audit",
                              "format_version": AUDIT_FORMAT_VERSION, "models": reports,
                              "comparison": compare_reports(*reports)
                              if len(reports) == 2 else None}
    page = write_page(report, out)
    atomic_write_json(out / "report.json", report)
    for r in reports:
        lk = r["leakage"]
        click.echo(f"{r['model']}: {r['profile']['sentence']}")
        click.echo(f"  the default ({lk['setting']}) moves its own value most in "
                   f"{lk['target_largest_rows']}/{len(lk['rows'])} rows, selectivity "
                   f"{lk['selectivity']}")
    log(f"wrote {page}, {out / 'report.json'} and the PNGs")


def _audit_one(model_spec: str, pack_spec: str | None, dtype: str, out: Path,
               opts: Any) -> dict[str, Any]:
    from conva_mlx.cli.packs import model_and_pack
    from conva_mlx.evaluation.audit import run_audit
    from conva_mlx.steering import SteeringSession

    lm, pack, path = model_and_pack(pack_spec, model_spec, dtype, True)
    log(f"auditing {lm.model_id} with the pack {path}")
    report = run_audit(SteeringSession(lm, pack), out / f"scores-{lm.fingerprint}", opts)
    del lm, pack
    gc.collect()  # one model in memory at a time
    return report
