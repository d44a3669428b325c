"""`conva-mlx chat`: the Textual terminal chat (imported lazily: textual loads only here)."""

from __future__ import annotations

import click

from conva_mlx.cli.options import model_option
from conva_mlx.steering.config import CHAT_SAMPLING


@click.command()
@model_option
@click.option("--pack", "pack_spec", default=None,
              help="Pack directory or hf://REPO_ID (default: the last one used with this "
                   "model, else offer to extract one).")
@click.option("--max-tokens", type=int, default=CHAT_SAMPLING.max_tokens, show_default=True,
              help="Longest reply, in tokens.")
@click.option("--temp", type=float, default=CHAT_SAMPLING.temp, show_default=True,
              help="Sampling temperature (0 = greedy).")
@click.option("--repetition-penalty", type=float, default=CHAT_SAMPLING.repetition_penalty,
              show_default=True,
              help="> 1 makes recently generated tokens less likely (1 = off); the default "
                   "keeps small models out of repetition loops.")
def chat(model_spec: str, dtype: str, pack_spec: str | None, max_tokens: int,
         temp: float, repetition_penalty: float) -> None:
    """Chat in the terminal, steering the model toward (or away from) values."""
    from conva_mlx import GenOptions
    from tui.app import ChatApp

    opts = GenOptions(max_tokens=max_tokens, temp=temp, repetition_penalty=repetition_penalty)
    ChatApp(model_spec, dtype, pack_spec, opts=opts).run()
