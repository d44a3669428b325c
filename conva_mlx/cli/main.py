"""Entry point: the `conva-mlx` click group and its user-error handling."""

from __future__ import annotations

import sys
from typing import Any

import click

from .. import __version__
from ..errors import ConvaError


class ConvaGroup(click.Group):
    """A click group that turns ConvaError into one clear line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConvaError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.secho("interrupted (finished work is saved)", fg="yellow", err=True)
            sys.exit(130)


@click.group(cls=ConvaGroup)
@click.version_option(__version__, prog_name="conva-mlx")
def cli() -> None:
    """Find and steer the human values inside language models (ConVA), in MLX."""


def _register() -> None:
    from . import models_cmd

    cli.add_command(models_cmd.models)
    for module_name in ("data_cmd", "extract_cmd", "generate_cmd", "analyze_cmd", "eval_cmd",
                        "chat_cmd", "export_cmd", "hub_cmd"):
        try:
            module = __import__(f"conva_mlx.cli.{module_name}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"conva_mlx.cli.{module_name}":
                raise
            continue
        module.register(cli)


_register()


def main() -> None:
    from ..blas import maybe_reexec_with_openblas

    maybe_reexec_with_openblas()
    cli()
