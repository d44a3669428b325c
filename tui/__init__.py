"""`conva-mlx chat`: a Textual terminal app to pick values, set strength and chat locally.

Uses only conva-mlx's public API (load_model, load_pack, SteeringSession, extract_pack).
"""

from __future__ import annotations

__all__ = ["ChatApp"]


def __getattr__(name: str) -> object:  # lazy: importing tui must not import textual or MLX
    if name == "ChatApp":
        from .app import ChatApp

        return ChatApp
    raise AttributeError(name)
