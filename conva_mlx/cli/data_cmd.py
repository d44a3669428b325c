"""`conva-mlx data`: validate a value-data directory, generate pairs or choice data through
an LLM API."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from conva_mlx.data.dataset import SHIPPED_DATA
from conva_mlx.data.generate import (
    DEFAULT_BASE_URL,
    DEFAULT_KEY_ENV,
    DEFAULT_MODEL,
    GenerateConfig,
    generate_pairs,
)
from conva_mlx.data.generate_choices import ChoicesConfig, generate_choices
from conva_mlx.data.validate import (
    LENGTH_RATIO_MAX,
    LENGTH_RATIO_MIN,
    MAX_UNCONTROLLED_MEAN,
    MIN_CONTEXT_SCORE,
    GroupStats,
    Issue,
    ValidationReport,
    validate_data,
)
from conva_mlx.errors import ConvaError
from conva_mlx.values import VALUE_NAMES


@click.group("data")
def data() -> None:
    """Validate and generate value data."""


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _row(s: GroupStats) -> list[str]:
    count = f"{s.count}/{s.expected}"
    if s.count != s.expected:
        count = f"[red]{count}[/red]"
    low = MAX_UNCONTROLLED_MEAN if s.group == "uncontrolled" else MIN_CONTEXT_SCORE
    mean, lowest = _fmt(s.mean_score), _fmt(s.min_score)
    if s.group == "uncontrolled" and s.mean_score is not None and s.mean_score >= low:
        mean = f"[red]{mean}[/red]"
    if s.group not in ("uncontrolled", "dilemmas") and s.min_score is not None \
            and s.min_score < low:
        lowest = f"[red]{lowest}[/red]"
    ratio = _fmt(s.mean_length_ratio)
    if s.group not in ("uncontrolled", "dilemmas") and s.mean_length_ratio is not None \
            and not LENGTH_RATIO_MIN <= s.mean_length_ratio <= LENGTH_RATIO_MAX:
        ratio = f"[red]{ratio}[/red]"
    dups = str(s.near_duplicates) if s.near_duplicates == 0 else f"[red]{s.near_duplicates}[/red]"
    return [s.value, s.group, count, mean, lowest, ratio, dups]


def _stats_table(report: ValidationReport) -> Table:
    table = Table(title=f"value data in {report.root}", title_justify="left")
    for name, justify in (("value", "left"), ("block", "left"), ("count", "right"),
                          ("mean ctx", "right"), ("min ctx", "right"),
                          ("len ratio", "right"), ("near-dup", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    order = {v: i for i, v in enumerate(VALUE_NAMES)}
    rows = sorted(report.stats, key=lambda s: (order.get(s.value, 99), s.group == "dilemmas",
                                               s.group == "uncontrolled"))
    last = None
    for s in rows:
        if last is not None and s.value != last:
            table.add_section()
        table.add_row(*_row(s))
        last = s.value
    return table


def _print_issues(title: str, issues: list[Issue], limit: int) -> None:
    if not issues:
        return
    click.echo(f"\n{title} ({len(issues)}):")
    shown = issues if limit <= 0 else issues[:limit]
    for issue in shown:
        click.echo(f"  {issue}")
    if len(shown) < len(issues):
        click.echo(f"  ... and {len(issues) - len(shown)} more (--limit 0 or --json shows all)")


@data.command("validate")
@click.argument("path", required=False, type=click.Path(path_type=Path),
                default=SHIPPED_DATA)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--limit", default=100, show_default=True,
              help="Errors and warnings listed at most (0 = all).")
def data_validate(path: Path, as_json: bool, limit: int) -> None:
    """Check a data directory (default: the shipped data): schema, counts, context control,
    near-duplicates and leakage. Exits 1 when there are errors."""
    report = validate_data(path)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        console = Console(width=max(100, Console().width))
        console.print(_stats_table(report))
        totals = ", ".join(f"{k} {v}" for k, v in report.totals.items())
        click.echo(f"totals: {totals}")
        _print_issues("errors", report.errors, limit)
        _print_issues("warnings", report.warnings, limit)
        click.echo(f"\n{report.summary()}")
    if not report.ok:
        raise ConvaError(f"{len(report.errors)} error(s) in {report.root}")


@data.command("generate")
@click.option("--value", type=click.Choice(VALUE_NAMES), help="The value (pairs).")
@click.option("--n", "n", type=click.IntRange(min=1),
              help="Pairs wanted in --out (pairs already there count).")
@click.option("--choices", "choices", is_flag=True,
              help="Write choice data (each dilemma's two actions) for --dilemmas instead "
                   "of pairs.")
@click.option("--dilemmas", type=click.Path(dir_okay=False, path_type=Path),
              help="With --choices: JSONL of dilemmas {id, value, competing, prompt}.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="JSONL file to append to; a rerun resumes where it stopped.")
@click.option("--base-url", default=DEFAULT_BASE_URL, show_default=True,
              help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1 for mlx_lm.server.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Model name to ask for.")
@click.option("--api-key-env", default=DEFAULT_KEY_ENV, show_default=True,
              help="Environment variable holding the API key; 'none' for a keyless local server.")
@click.option("--max-retries", default=5, show_default=True, type=click.IntRange(min=0),
              help="Retries per request on rate limits, timeouts and server errors.")
@click.option("--temp", "--temperature", "temperature", default=0.9, show_default=True,
              type=float, help="Sampling temperature of the API model (--temperature: the "
                               "same, its older name).")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Positives asked for per request (pairs; default 5).")
def data_generate(value: str | None, n: int | None, choices: bool, dilemmas: Path | None,
                  out: Path, base_url: str, model: str, api_key_env: str, max_retries: int,
                  temperature: float, batch_size: int | None) -> None:
    """Generate context-controlled pairs for one value through an LLM API (two stages:
    positives, then a minimally changed negative for each), or with --choices the two
    written actions for each dilemma of --dilemmas (choices/<value>.jsonl rows)."""
    if choices:
        extra = [name for name, given in (("--value", value), ("--n", n),
                                          ("--batch-size", batch_size)) if given is not None]
        if extra:
            raise ConvaError(f"--choices writes actions for the dilemmas in --dilemmas; "
                             f"{', '.join(extra)} "
                             f"{'are' if len(extra) > 1 else 'is'} for pairs only")
        if dilemmas is None:
            raise ConvaError("--choices needs --dilemmas FILE.jsonl (the dilemmas to write "
                             "actions for)")
        result = generate_choices(ChoicesConfig(
            dilemmas=dilemmas, out=out, base_url=base_url, model=model,
            api_key_env=api_key_env, max_retries=max_retries, temperature=temperature))
        click.echo(result.summary())
        if not result.complete:
            raise ConvaError(f"{out} has actions for {result.existing + result.written} of "
                             f"{result.target} dilemmas; rerun to continue")
        return
    if dilemmas is not None:
        raise ConvaError("--dilemmas goes with --choices")
    if value is None or n is None:
        raise ConvaError("pairs need --value and --n (or --choices --dilemmas FILE.jsonl for "
                         "choice data)")
    config = GenerateConfig(value=value, n=n, out=out, base_url=base_url, model=model,
                            api_key_env=api_key_env, max_retries=max_retries,
                            temperature=temperature, batch_size=batch_size or 5)
    report = generate_pairs(config)
    click.echo(report.summary())
    if not report.complete:
        raise ConvaError(f"{out} holds {report.existing + report.written} of {n} pairs; "
                         f"rerun to continue")
