"""Entry point: the `conva-mlx` click group and its user-error handling."""

from __future__ import annotations

import importlib
import re
import sys
import warnings
from typing import Any

import click

from conva_mlx import __version__
from conva_mlx.errors import ConvaError, ConvaWarning

# command name -> (module, attribute): modules are imported only when their command runs,
# so `conva-mlx --help` and light commands do not pay for MLX, scikit-learn or Textual.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("models_cmd", "models"),
    "data": ("data_cmd", "data"),
    "extract": ("extract_cmd", "extract"),
    "generate": ("generate_cmd", "generate"),
    "analyze": ("analyze_cmd", "analyze"),
    "eval": ("eval_cmd", "eval_command"),
    "choices": ("choices_cmd", "choices"),
    "calibrate": ("calibrate_cmd", "calibrate"),
    "audit": ("audit_cmd", "audit"),
    "chat": ("chat_cmd", "chat"),
    "export": ("export_cmd", "export"),
    "import-vector": ("export_cmd", "import_vector_cmd"),
    "push": ("hub_cmd", "push"),
    "pull": ("hub_cmd", "pull"),
    "pack": ("pack_cmd", "pack_group"),
    "judge-check": ("judge_cmd", "judge_check"),
    "serve": ("serve_cmd", "serve"),
}
_HELP = {
    "models": "Prepare and import models.",
    "data": "Validate and generate value data.",
    "extract": "Extract value vectors and the gate into a vector pack.",
    "generate": "Generate a reply, steered toward (or away from) values.",
    "analyze": "Compare value-vector similarities with the Schwartz circumplex.",
    "eval": "Evaluate steering: control success, fluency, general ability.",
    "choices": "What steering does to the model's choices on dilemmas (no judge).",
    "calibrate": "Aim and size the default method's push for a pack, by measurement.",
    "audit": "A model's value report: profile, encoding, dose, leakage, gate (HTML + JSON).",
    "chat": "Chat in the terminal with values you pick.",
    "export": "Export a value's vectors for llama.cpp or PyTorch.",
    "import-vector": "Import a llama.cpp / repeng control vector as a pack.",
    "push": "Upload a pack to the Hugging Face Hub.",
    "pull": "Download a pack from the Hugging Face Hub (or the local cache).",
    "pack": "Check a vector pack (files, fields, tensor binding).",
    "judge-check": "Score a judge against reader-labelled replies (kappa, CSR by method).",
    "serve": "Serve an OpenAI-compatible API with per-request value steering.",
}


class ConvaGroup(click.Group):
    """Lazily loaded commands; ConvaError becomes one clear line and exit code 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module_name, attr = LAZY_COMMANDS[cmd_name]
            module = importlib.import_module(f"conva_mlx.cli.{module_name}")
            command = getattr(module, attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        warnings.showwarning = _show_warning
        try:
            return super().invoke(ctx)
        except ConvaError as exc:
            _fail(str(exc))
        except UnicodeEncodeError as exc:
            # click hands undecodable argv bytes over as lone surrogates
            if "surrogate" in str(exc.reason):
                _fail("an argument is not valid UTF-8 text (check the prompt's encoding)")
            raise
        except OSError as exc:
            # The file system said no (permissions, disk full, read-only, /proc...): that
            # is the user's environment, not a bug, so one line and exit 1.
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(f"{where}{exc.strerror or exc}")
        except KeyboardInterrupt:
            click.secho("interrupted (finished work is saved)", fg="yellow", err=True)
            sys.exit(130)


def _fail(message: str) -> None:
    one_line = re.sub(r"\s*\n\s*", " ", message.strip())  # a wrapped library message
    click.secho(f"error: {one_line}", fg="red", err=True)
    sys.exit(1)


_shown: set[str] = set()


def _show_warning(message: Warning | str, category: type[Warning], filename: str,
                  lineno: int, file: Any = None, line: str | None = None) -> None:
    """conva-mlx's own warnings as one yellow line each, once; others as Python prints them."""
    if not issubclass(category, ConvaWarning):
        _default_showwarning(message, category, filename, lineno, file, line)
        return
    text = str(message)
    if text not in _shown:
        _shown.add(text)
        click.secho(f"warning: {text}", fg="yellow", err=True)


_default_showwarning = warnings.showwarning


@click.group(cls=ConvaGroup)
@click.version_option(__version__, prog_name="conva-mlx")
def cli() -> None:
    """Find and steer the human values inside language models (ConVA), in MLX."""


def main() -> None:
    from conva_mlx.fsutil import ensure_standard_streams
    from conva_mlx.models.blas import maybe_reexec_with_openblas

    ensure_standard_streams()
    maybe_reexec_with_openblas()
    cli()
