"""Value steering over mlx-lm: the calibrated gated push (the default), ConVA's minimal
probe push, and the baselines (CAA, ICA).

config: what to steer and how; hooks: the block hooks and per-block plans; engine: the
prefills and batched decoding every call goes through; session: `SteeringSession`;
context: `steered`, steering inside any mlx-lm decode loop; reports: the diagnostics.
"""

from conva_mlx.steering.config import (
    CHAT_SAMPLING,
    DEFAULT_METHOD,
    METHODS,
    MODES,
    GenOptions,
    Method,
    Mode,
    SteerConfig,
    Target,
    ica_prefix,
    parse_targets,
)
from conva_mlx.steering.context import SteeringHandle, steered
from conva_mlx.steering.reports import ExpectedEffect, GateReport, GenerationResult, LayerReport
from conva_mlx.steering.session import Prepared, ScoredPrompt, SteeringSession, StreamPiece

__all__ = [
    "CHAT_SAMPLING",
    "DEFAULT_METHOD",
    "METHODS",
    "MODES",
    "ExpectedEffect",
    "GateReport",
    "GenOptions",
    "GenerationResult",
    "LayerReport",
    "Method",
    "Mode",
    "Prepared",
    "ScoredPrompt",
    "SteerConfig",
    "SteeringHandle",
    "SteeringSession",
    "StreamPiece",
    "Target",
    "ica_prefix",
    "parse_targets",
    "steered",
]
