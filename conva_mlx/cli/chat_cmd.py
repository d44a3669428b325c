"""`conva-mlx chat`: the Textual terminal chat (imported lazily: textual loads only here)."""

from __future__ import annotations

import click

from conva_mlx.cli.options import model_option


@click.command()
@model_option
@click.option("--pack", "pack_spec", default=None,
              help="Pack directory or hf://REPO_ID (default: the last one used with this "
                   "model, else offer to extract one).")
@click.option("--max-tokens", type=int, default=400, show_default=True,
              help="Longest reply, in tokens.")
@click.option("--temp", type=float, default=0.0, show_default=True)
def chat(model_spec: str, dtype: str, pack_spec: str | None, max_tokens: int,
         temp: float) -> None:
    """Chat in the terminal, steering the model toward (or away from) values."""
    from tui.app import ChatApp

    ChatApp(model_spec, dtype, pack_spec, max_tokens=max_tokens, temp=temp).run()
