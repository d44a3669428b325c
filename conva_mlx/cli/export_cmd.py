"""`conva-mlx export` (llama.cpp GGUF, safetensors, torch) and `conva-mlx import-vector`."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import click

from conva_mlx.cli.options import log, model_option
from conva_mlx.cli.packs import load_model_for_pack
from conva_mlx.errors import ConvaError
from conva_mlx.fsutil import check_output_file
from conva_mlx.packs.save import save_pack
from conva_mlx.probes.recipe import check_p0
from conva_mlx.sharing.pack_source import open_pack
from conva_mlx.values import check_value

FORMATS = ("gguf", "safetensors", "torch", "all")
_EXT = {"gguf": ".gguf", "safetensors": ".safetensors", "torch": ".pt"}


def _target(out: str, into_dir: bool, fmt: str, value: str) -> Path:
    p = Path(out).expanduser()
    if into_dir or p.is_dir() or out.endswith(("/", "\\")):
        return p / f"{value}{_EXT[fmt]}"
    return p


@click.command("export")
@click.option("--pack", "pack_spec", required=True, help="Pack directory or hf://REPO_ID.")
@click.option("--value", required=True, help="The value to export.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="all", show_default=True)
@click.option("--out", required=True,
              help="Output file (a directory for --format all: VALUE.gguf, "
                   "VALUE.safetensors, VALUE.pt).")
@click.option("--p0", type=float, default=None,
              help="Target probability P0 (default: the pack's default for the value).")
@click.option("--scale", type=float, default=None,
              help="GGUF only: use this strength at every layer instead of measuring the "
                   "mean minimal eps on the training sentences (no model needed).")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@model_option
def export(pack_spec: str, value: str, fmt: str, out: str, p0: float | None,
           scale: float | None, force: bool, model_spec: str, dtype: str) -> None:
    """Export one value of a pack for llama.cpp (GGUF control vector) and PyTorch.

    Layer k = output of decoder block k (0-based) = HF model.layers[k] = llama.cpp
    direction.k. GGUF needs the model (--model) to measure the strength, unless --scale.
    """
    from conva_mlx.sharing.export_gguf import export_gguf, mean_eps
    from conva_mlx.sharing.export_torch import export_safetensors, export_torch

    check_value(value)
    if p0 is not None:
        check_p0(p0, "--p0")
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise ConvaError(f"--scale must be a positive finite number, got {scale}")
    pack = open_pack(pack_spec)
    entry = pack.value(value)
    formats = ["gguf", "safetensors", "torch"] if fmt == "all" else [fmt]
    if fmt == "all" and Path(out).expanduser().exists() and not Path(out).expanduser().is_dir():
        raise ConvaError(f"{out}: exists and is not a directory (--format all writes "
                         "VALUE.gguf, VALUE.safetensors and VALUE.pt into a directory)")
    if "torch" in formats and fmt == "all":
        try:
            import torch  # noqa: F401
        except ImportError:
            log("torch is not installed: skipping the .pt file (pip install 'conva-mlx[torch]')")
            formats.remove("torch")
    if entry.fixed_scale is not None and fmt == "all":
        formats = ["gguf"]
        log(f"'{value}' is an imported control vector: only the GGUF format applies")
    targets = {f: check_output_file(_target(out, fmt == "all", f, value), force)
               for f in formats}  # every path checked before any work
    for f in formats:
        path = targets[f]
        if f == "gguf":
            scales = None
            if entry.fixed_scale is None:
                if scale is not None:
                    scales = {k: float(scale) for k in entry.layers}
                else:
                    lm = load_model_for_pack(model_spec, dtype, pack)
                    log(f"measuring the mean minimal eps for {value} on its training "
                        "sentences")
                    scales = mean_eps(lm, pack, value, p0)
            res = export_gguf(pack, value, path, scales, p0)
            for w in res.warnings:
                click.secho(f"warning: {w}", fg="yellow", err=True)
            scales_text = ", ".join(f"{k}: {s:.2f}" for k, s in res.scales.items())
            click.echo(f"wrote {path} (llama.cpp control vector, blocks {res.layers}; "
                       f"scale per block {scales_text})")
        elif f == "safetensors":
            click.echo(f"wrote {export_safetensors(pack, value, path, p0)}")
        else:
            click.echo(f"wrote {export_torch(pack, value, path, p0)}")


@click.command("import-vector")
@click.argument("file", type=click.Path(dir_okay=False))
@model_option
@click.option("--out", required=True, help="Directory of the new pack.")
@click.option("--value", default=None,
              help="Value name (default: the file's conva.value metadata).")
@click.option("--force", is_flag=True, help="Replace the pack already at --out.")
def import_vector_cmd(file: str, model_spec: str, dtype: str, out: str,
                      value: str | None, force: bool) -> None:
    """Import a llama.cpp / repeng control vector (GGUF) as a fixed-strength pack.

    Such a pack has no probe: no gate and no minimal eps. Steer with --method caa
    (--caa-coef scales it).
    """
    from conva_mlx.fsutil import check_output_dir
    from conva_mlx.models.loading import load_model
    from conva_mlx.packs.save import PACK_OUTPUT
    from conva_mlx.sharing.import_vector import IMPORTED_NOTE, import_vector

    check_output_dir(out, PACK_OUTPUT, force)
    lm = load_model(model_spec, dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pack = import_vector(file, lm, value)
    for w in caught:
        click.secho(f"warning: {w.message}", fg="yellow", err=True)
    path = save_pack(pack, out, overwrite=force)
    name = next(iter(pack.values))
    click.echo(f"wrote {path} (value {name}, blocks {pack.values[name].layers})")
    log(f"note: {IMPORTED_NOTE}")
