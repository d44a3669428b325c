"""`conva-mlx judge-check`: score a judge against reader-labelled replies."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from conva_mlx.cli.options import log
from conva_mlx.evaluation.judge_check import SHIPPED_LABELS, JudgeCard, load_labels
from conva_mlx.evaluation.judge_registry import (
    DEFAULT_JUDGE,
    JUDGE_NAMES,
    judge_card_for,
    make_judge,
)


def card_table(card: JudgeCard) -> Table:
    table = Table(title=f"{card.judge} vs readers on {card.n} replies",
                  caption=f"kappa {card.kappa:.3f}, agreement {card.agreement:.3f}; fluency "
                          f"agreement {card.fluency_agreement:.3f} (kappa "
                          f"{card.fluency_kappa:.2f})")
    for col in ("method", "n", "CSR judge", "CSR readers", "FR judge", "FR readers"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for m, row in card.per_method.items():
        table.add_row(m, str(row["n"]), f"{row['judge_csr']:.2f}", f"{row['label_csr']:.2f}",
                      f"{row['judge_fr']:.2f}", f"{row['label_fr']:.2f}")
    return table


def confusion_table(card: JudgeCard) -> Table:
    c = card.confusion
    table = Table(title="value labels: judge (rows) x readers (columns)")
    table.add_column("")
    table.add_column("readers yes", justify="right")
    table.add_column("readers no", justify="right")
    table.add_row("judge yes", str(c["judge_yes_label_yes"]), str(c["judge_yes_label_no"]))
    table.add_row("judge no", str(c["judge_no_label_yes"]), str(c["judge_no_label_no"]))
    return table


@click.command("judge-check")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False, path_type=Path),
              default=SHIPPED_LABELS, show_default="the shipped reader labels",
              help="JSONL of {value, question, reply, value_yes, fluent[, method, prompt_id]}.")
@click.option("--judge", "judge_name", type=click.Choice(JUDGE_NAMES), default=DEFAULT_JUDGE,
              show_default=True)
@click.option("--judge-base-url", default=None, help="openai judge: base URL.")
@click.option("--judge-model", default="gpt-4o-mini", show_default=True,
              help="openai judge: model name.")
@click.option("--judge-api-key-env", default="OPENAI_API_KEY", show_default=True,
              help="openai judge: environment variable with the key ('none' for local).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def judge_check(labels_file: Path, judge_name: str, judge_base_url: str | None,
                judge_model: str, judge_api_key_env: str, as_json: bool) -> None:
    """Score a judge against reader-labelled replies: kappa, agreement, per-method CSR."""
    labels = load_labels(labels_file)
    log(f"{len(labels)} labelled replies from {labels_file}; judge {judge_name}")
    judge = make_judge(judge_name, base_url=judge_base_url, model=judge_model,
                       api_key_env=judge_api_key_env, values=sorted({r.value for r in labels}))
    card = judge_card_for(judge, labels, labels_file.name)
    if as_json:
        click.echo(json.dumps(card.as_dict(), indent=2))
        return
    console = Console()
    console.print(card_table(card))
    console.print(confusion_table(card))
    if card.note:
        console.print(card.note, style="dim")
