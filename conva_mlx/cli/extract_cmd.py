"""`conva-mlx extract`: value vectors, probes and gate -> a vector pack."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from conva_mlx.cli.options import log, model_option
from conva_mlx.data.dataset import ValueData
from conva_mlx.errors import ConvaError
from conva_mlx.extraction import ExtractOptions, extract_pack
from conva_mlx.fsutil import check_output_dir
from conva_mlx.models.layers import parse_layers
from conva_mlx.models.loading import load_model
from conva_mlx.packs.pack import Pack
from conva_mlx.packs.save import PACK_OUTPUT, save_pack
from conva_mlx.plots import plot_accuracy_by_layer
from conva_mlx.probes.recipe import (
    DEFAULT_RECIPE,
    RECIPES,
    Recipe,
    check_p0,
    get_recipe,
)
from conva_mlx.values import parse_values


def accuracy_table(pack: Pack) -> Table:
    table = Table(title=f"Probe accuracy by value ({pack.model.model_id})")
    for col in ("value", "best block", "held-out acc", "steered blocks", "n", "uncontrolled acc"):
        table.add_column(col)
    for name, v in pack.values.items():
        acc = v.probes.accuracies
        best = int(acc.argmax())
        layers = f"{min(v.layers)}-{max(v.layers)}" if v.layers else "-"
        unc = f"{v.uncontrolled.accuracies.max():.2f}" if v.uncontrolled is not None else "-"
        table.add_row(name, str(best), f"{acc[best]:.2f}", layers, str(len(v.layers)), unc)
    return table


def timing_text(timings: dict[str, float], pack: Pack) -> str:
    """Where the extraction's time went: the probes per value and the gate's stages."""
    probes = [t for k, t in timings.items() if k.startswith("probes ")]
    parts = []
    if probes:
        parts.append(f"probes {sum(probes):.0f} s ({len(probes)} value(s), "
                     f"{min(probes):.0f}-{max(probes):.0f} s each; cached captures are free)")
    if "gate" in timings and pack.gate is not None:
        scored = sorted(pack.gate.layer_scores)
        parts.append(f"gate {timings['gate']:.0f} s (blocks {scored[0]}-{scored[-1]} scored, "
                     f"block {pack.gate.layer} chosen)")
    return "time: " + "; ".join(parts) + f"; total {sum(timings.values()):.0f} s"


def recipe_with_c(name: str, c_spec: str | None) -> Recipe:
    recipe = get_recipe(name)
    if c_spec is None:
        return recipe
    if c_spec == "auto":
        c: float | None = None
    else:
        try:
            c = float(c_spec)
        except ValueError as exc:
            raise ConvaError(f"--c must be a positive number or 'auto', got '{c_spec}'") from exc
        if not c > 0:
            raise ConvaError(f"--c must be a positive number or 'auto', got '{c_spec}'")
    return dataclasses.replace(recipe, name=f"{name}+c={c_spec}", c=c,
                                 description=f"{recipe.description} C = {c_spec}.")


def gate_kind_text(by_kind: dict[str, dict[str, float]]) -> str:
    cells = [f"{k} opens {v['open_rate']:.2f} (n {int(v['n'])})" for k, v in by_kind.items()
             if k != "all"]
    if "all" in by_kind:
        cells.append(f"precision {by_kind['all']['precision']:.2f}, recall "
                     f"{by_kind['all']['recall']:.2f}")
    return "; ".join(cells)


def selection_notes(pack: Pack) -> list[str]:
    return [f"{name}: {v.selection_note}" for name, v in pack.values.items()]


@click.command()
@model_option
@click.option("--values", "values_spec", default="all", show_default=True,
              help="'all' or a comma-separated list of values.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Data directory (default: the shipped data).")
@click.option("--layers", "layers_spec", default=None,
              help="Steer these blocks for every value (e.g. 8-20); default: automatic.")
@click.option("--recipe", "recipe_name", type=click.Choice(list(RECIPES)),
              default=DEFAULT_RECIPE, show_default=True,
              help="How probes are fitted, where they read, which blocks are steered and the "
                   "default P0: " + "; ".join(f"{r.name}: {r.description}"
                                              for r in RECIPES.values()))
@click.option("--c", "c_spec", default=None,
              help="Override the recipe's L2 inverse strength C: a number, or 'auto' (chosen "
                   "per block by held-out log-loss). The pack records the changed recipe.")
@click.option("--p0", "default_p0", type=float, default=None,
              help="Default strength stored in the pack (default: the recipe's per value).")
@click.option("--no-gate", is_flag=True, help="Do not train the gate.")
@click.option("--no-uncontrolled", "--no-ablation", "no_uncontrolled", is_flag=True,
              help="Skip the ablation's probes on the uncontrolled pairs (--no-ablation: "
                   "the old name).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace the pack already at --out.")
def extract(model_spec: str, dtype: str, values_spec: str, data_dir: Path | None,
            layers_spec: str | None, recipe_name: str, c_spec: str | None,
            default_p0: float | None, no_gate: bool,
            no_uncontrolled: bool, out_dir: Path, force: bool) -> None:
    """Extract value vectors and the gate into a vector pack."""
    values = parse_values(values_spec)
    if default_p0 is not None:
        check_p0(default_p0, "--p0")
    check_output_dir(out_dir, PACK_OUTPUT, force)  # before minutes of work, not after
    data = ValueData(data_dir)
    lm = load_model(model_spec, dtype)
    log(f"model {lm.model_id}: {lm.num_layers} blocks, hidden {lm.hidden_size}, {lm.dtype}")
    opts = ExtractOptions(layers=parse_layers(layers_spec, lm.num_layers),
                          default_p0=default_p0, with_uncontrolled=not no_uncontrolled,
                          with_gate=not no_gate, recipe=recipe_with_c(recipe_name, c_spec))
    timings: dict[str, float] = {}
    pack = extract_pack(lm, values, data, opts, show_progress=True, timings=timings)
    save_pack(pack, out_dir, overwrite=force)
    plot = plot_accuracy_by_layer({n: v.probes.accuracies for n, v in pack.values.items()},
                                  {n: v.layers for n, v in pack.values.items()},
                                  out_dir / "probe_accuracy.png",
                                  f"Probe accuracy by block - {lm.model_id}", opts.threshold)
    console = Console()
    console.print(accuracy_table(pack))
    for note in selection_notes(pack):
        console.print(f"  {note}", style="dim")
    if pack.gate is not None:
        g = pack.gate
        console.print(f"gate: block {g.layer}, threshold {g.threshold:.3f}, held-out precision "
                      f"{g.metrics.precision:.2f} recall {g.metrics.recall:.2f} "
                      f"F1 {g.metrics.f1:.2f} (false-open rate {g.metrics.false_open_rate:.2f})")
        if g.by_kind:
            console.print("gate on held-out queries beyond dilemmas: " + gate_kind_text(g.by_kind))
    console.print(f"recipe {opts.recipe.name}: {opts.recipe.description}", style="dim")
    console.print(timing_text(timings, pack), style="dim")
    console.print(f"pack written to {out_dir} (plot: {plot})")
