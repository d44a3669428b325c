"""`conva-mlx analyze`: value-vector similarities vs the Schwartz circumplex."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from conva_mlx.errors import ConvaError
from conva_mlx.fsutil import check_output_file
from conva_mlx.packs.analysis import StructureReport, value_structure
from conva_mlx.plots import plot_heatmap
from conva_mlx.sharing.pack_source import open_pack, resolve_pack_path

ABBREVIATIONS = {"self-direction": "SD", "stimulation": "ST", "hedonism": "HE",
                 "achievement": "AC", "power": "PO", "security": "SE", "conformity": "CO",
                 "tradition": "TR", "benevolence": "BE", "universalism": "UN"}


def similarity_table(rep: StructureReport) -> Table:
    table = Table(title=f"Cosine similarity of value vectors at block {rep.layer}",
                  caption="columns use Schwartz's abbreviations, in circumplex order",
                  padding=(0, 0))
    table.add_column("", no_wrap=True)
    for v in rep.values:
        table.add_column(ABBREVIATIONS.get(v, v[:3]), justify="right")
    for i, v in enumerate(rep.values):
        cells = []
        for j in range(len(rep.values)):
            c = rep.cosine[i, j]
            style = "bold green" if c > 0.3 else "red" if c < -0.3 else ""
            cells.append(f"[{style}]{c:+.2f}[/]" if style else f"{c:+.2f}")
        table.add_row(f"{ABBREVIATIONS.get(v, v[:3])} {v}", *cells)
    return table


def heatmap_path(pack_spec: str, out: Path | None, force: bool) -> Path:
    """Where the heatmap goes, checked before any work. The pack's own similarity.png is
    replaced freely (the pack owns it); any other existing file only with --force."""
    if out is None:
        folder = resolve_pack_path(pack_spec)
        try:
            return check_output_file(folder / "similarity.png", force=True)
        except ConvaError as exc:
            raise ConvaError(f"{folder}: cannot write similarity.png into the pack "
                             "(is it read-only?); pass --out FILE.png to write the heatmap "
                             "elsewhere") from exc
    if out.expanduser().is_dir():
        out = out / "similarity.png"
    return check_output_file(out, force)


@click.command()
@click.option("--pack", "pack_spec", required=True)
@click.option("--layer", type=int, default=None,
              help="Block to compare at (default: where the probes are jointly best).")
@click.option("--out", "out_png", type=click.Path(path_type=Path), default=None,
              help="Heatmap PNG (default: <pack>/similarity.png; a directory: "
                   "DIR/similarity.png).")
@click.option("--force", is_flag=True, help="Overwrite an existing --out file.")
@click.option("--json", "as_json", is_flag=True)
def analyze(pack_spec: str, layer: int | None, out_png: Path | None, force: bool,
            as_json: bool) -> None:
    """Compare value-vector similarities with the Schwartz circumplex."""
    pack = open_pack(pack_spec)
    out_png = heatmap_path(pack_spec, out_png, force)
    rep = value_structure(pack, layer)
    plot_heatmap(rep.cosine, rep.values, out_png,
                 f"Value vectors at block {rep.layer} ({pack.model.model_id})")
    verdict = "yes" if rep.neighbours_more_similar else "no"
    if as_json:
        click.echo(json.dumps({
            "layer": rep.layer, "values": rep.values,
            "cosine": [[round(float(x), 4) for x in row] for row in rep.cosine],
            "neighbour_mean": rep.neighbour_mean, "opposite_mean": rep.opposite_mean,
            "neighbours_more_similar": rep.neighbours_more_similar,
            "spearman_vs_circumplex": rep.spearman, "heatmap": str(out_png)}, indent=2))
        return
    console = Console()
    console.print(similarity_table(rep))
    console.print(
        f"neighbours on the circumplex: mean cosine {rep.neighbour_mean:+.3f}; opposites: "
        f"{rep.opposite_mean:+.3f} -> neighbours more similar than opposites: {verdict} "
        f"(gap {rep.neighbour_mean - rep.opposite_mean:+.3f}); Spearman rho between similarity "
        f"and circumplex closeness {rep.spearman:+.2f}")
    console.print(f"heatmap: {out_png}")
