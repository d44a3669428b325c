"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from conva_mlx.errors import ConvaError
from conva_mlx.models.loading import DTYPES
from conva_mlx.models.wheel_models import WHEEL_MODELS

F = TypeVar("F", bound=Callable[..., Any])


def model_option(f: F) -> F:
    f = click.option("--model", "model_spec", default="default", show_default=True,
                     help="'default', " + ", ".join(f"'{n}'" for n in WHEEL_MODELS)
                          + ", a local MLX directory, a .gguf file or a Hub repo id.")(f)
    f = click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
                     help="Compute dtype; auto = float32 on CPU for small models, "
                          "quantized on GPU.")(f)
    return f


def log(message: str) -> None:
    click.secho(message, err=True, dim=True)


def check_text(text: str, what: str) -> str:
    """Command-line text must be real UTF-8 and not blank."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # undecodable argv bytes arrive as lone surrogates
        raise ConvaError(f"{what} is not valid UTF-8 text (character {exc.start + 1}); "
                         "check your terminal's encoding") from exc
    if not text.strip():
        raise ConvaError(f"{what} is empty")
    return text


def parse_floats(spec: str | None, what: str) -> list[float] | None:
    """'0.5,1,2' -> [0.5, 1.0, 2.0] (None stays None); one clear error otherwise."""
    if spec is None:
        return None
    try:
        out = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError as exc:
        raise ConvaError(f"{what} must be comma-separated numbers, got '{spec}'") from exc
    if not out:
        raise ConvaError(f"{what} is empty")
    return out
