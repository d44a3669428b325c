"""conva-mlx: find and steer the human values inside language models (ConVA), in MLX.

    import conva_mlx as cm
    lm = cm.load_model()                                  # SmolLM2-135M-Instruct
    pack = cm.extract(lm, "benevolence")                  # probes, steered blocks, gate
    session = cm.SteeringSession(lm, pack)
    reply = session.generate("Should I help my neighbour move?",
                             cm.SteerConfig("benevolence:0.95"))

Names load lazily, so `import conva_mlx` (and `conva-mlx --help`) stays fast. On Linux,
importing conva_mlx before MLX puts OpenBLAS under MLX's CPU backend (5-10x faster than its
reference BLAS), as the CLI does.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


def _fast_cpu_blas() -> None:
    """The CLI's fast path for library users: load OpenBLAS in-process before MLX, or say
    in one line how to get it when MLX was imported first."""
    import sys

    # `python -m conva_mlx.models.blas` (printing the LD_PRELOAD value) imports this package
    # while sys.argv[0] is still "-m": leave the module to runpy, untouched
    if not sys.platform.startswith("linux") or sys.argv[:1] == ["-m"]:
        return
    from conva_mlx.models.blas import load_in_process, preload_active, preload_libraries

    if load_in_process() or not preload_libraries() or preload_active():
        return
    import warnings

    from conva_mlx.errors import ConvaWarning

    warnings.warn("MLX was imported before conva_mlx, so it runs on its reference BLAS (5-10x "
                  "slower on CPU): import conva_mlx first, or run python with "
                  "LD_PRELOAD=$(python -m conva_mlx.models.blas)", ConvaWarning, stacklevel=3)


_fast_cpu_blas()

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "ConvaError": "conva_mlx.errors",
    "LoadedModel": "conva_mlx.models.loading",
    "load_model": "conva_mlx.models.loading",
    "Pack": "conva_mlx.packs.pack",
    "save_pack": "conva_mlx.packs.save",
    "load_pack": "conva_mlx.packs.pack",
    "open_pack": "conva_mlx.sharing.pack_source",
    "extract": "conva_mlx.extraction",
    "ExtractOptions": "conva_mlx.extraction",
    "SteeringSession": "conva_mlx.steering",
    "DEFAULT_METHOD": "conva_mlx.steering",
    "CHAT_SAMPLING": "conva_mlx.steering",
    "ExpectedEffect": "conva_mlx.steering",
    "SteerConfig": "conva_mlx.steering",
    "Target": "conva_mlx.steering",
    "GenOptions": "conva_mlx.steering",
    "GenerationResult": "conva_mlx.steering",
    "StreamPiece": "conva_mlx.steering",
    "ScoredPrompt": "conva_mlx.steering",
    "GateReport": "conva_mlx.steering",
    "LayerReport": "conva_mlx.steering",
    "steered": "conva_mlx.steering",
    "VALUE_NAMES": "conva_mlx.values",
    "VALUE_GROUPS": "conva_mlx.values",
    "parse_values": "conva_mlx.values",
    "resolve_pack_path": "conva_mlx.sharing.pack_source",
}

__all__ = [
    "CHAT_SAMPLING",
    "DEFAULT_METHOD",
    "VALUE_GROUPS",
    "VALUE_NAMES",
    "ConvaError",
    "ExpectedEffect",
    "ExtractOptions",
    "GateReport",
    "GenOptions",
    "GenerationResult",
    "LayerReport",
    "LoadedModel",
    "Pack",
    "ScoredPrompt",
    "SteerConfig",
    "SteeringSession",
    "StreamPiece",
    "Target",
    "__version__",
    "extract",
    "load_model",
    "load_pack",
    "open_pack",
    "parse_values",
    "resolve_pack_path",
    "save_pack",
    "steered",
]

if TYPE_CHECKING:
    from conva_mlx.errors import ConvaError
    from conva_mlx.extraction import ExtractOptions, extract
    from conva_mlx.models.loading import LoadedModel, load_model
    from conva_mlx.packs.pack import Pack, load_pack
    from conva_mlx.packs.save import save_pack
    from conva_mlx.sharing.pack_source import open_pack, resolve_pack_path
    from conva_mlx.steering import (
        CHAT_SAMPLING,
        DEFAULT_METHOD,
        ExpectedEffect,
        GateReport,
        GenerationResult,
        GenOptions,
        LayerReport,
        ScoredPrompt,
        SteerConfig,
        SteeringSession,
        StreamPiece,
        Target,
        steered,
    )
    from conva_mlx.values import VALUE_GROUPS, VALUE_NAMES, parse_values


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'conva_mlx' has no attribute '{name}'")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
