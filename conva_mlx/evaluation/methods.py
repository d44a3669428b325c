"""The evaluation's methods: each name's steering settings, parsed once for the CLI and runs."""

from __future__ import annotations

from typing import Any

from conva_mlx.errors import ConvaError
from conva_mlx.probes.recipe import Direction
from conva_mlx.steering import SteerConfig, Target
from conva_mlx.steering.config import Mode, Positions

# Evaluation method name -> SteerConfig settings.
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "none": {"method": "none"},
    "ica": {"method": "ica"},
    "calibrated": {"method": "calibrated", "gate": True, "instruct": False},  # the push alone
    # ICA's instruction + the calibrated push, both only where the gate opens (--instruct)
    "ica+calibrated": {"method": "calibrated", "gate": True, "instruct": True},
    "caa": {"method": "caa"},
    "conva": {"method": "conva", "gate": True},
    "conva-nogate": {"method": "conva", "gate": False},
    "conva-uncontrolled": {"method": "conva", "gate": True, "probes": "uncontrolled"},
}
EVAL_METHODS: tuple[str, ...] = tuple(METHOD_SETTINGS)
# The methods whose general ability (value-unrelated multiple choice) is measured.
GENERAL_METHODS: tuple[str, ...] = ("none", "conva-nogate", "conva", "calibrated",
                                     "ica+calibrated")


def steer_config(method: str, value: str, negative_prompt: bool = False,
                 p0: float | None = None, caa_coef: float = 1.0, mode: Mode | None = None,
                 direction: Direction | None = None, positions: Positions | None = None,
                 strength: float | None = None) -> SteerConfig:
    """Settings of one evaluation method; p0 None = the pack's default for the value.
    `mode` and `direction` apply to the ConVA methods (None = prompt mode, the pack's
    recipe direction), `strength` to the calibrated ones (1 = the calibrated push; None =
    the pack's default strength)."""
    if method not in METHOD_SETTINGS:
        raise ConvaError(f"unknown method '{method}' (choose from {', '.join(EVAL_METHODS)})")
    settings = dict(METHOD_SETTINGS[method])
    if settings["method"] == "conva":
        settings.update(mode=mode or "prompt", direction=direction,
                        positions=positions or "all")
    if settings["method"] == "calibrated":
        settings["strength"] = strength
    return SteerConfig(targets=[Target(value, p0)], negative_prompt=negative_prompt,
                       caa_coef=caa_coef, **settings)


def parse_methods(spec: str) -> list[str]:
    """'none,conva,...' -> the method names in order, each checked, without repeats."""
    methods = [m.strip() for m in spec.split(",") if m.strip()]
    for m in methods:
        if m not in METHOD_SETTINGS:
            raise ConvaError(f"unknown method '{m}' (choose from {', '.join(EVAL_METHODS)})")
    if not methods:
        raise ConvaError("choose at least one method")
    return list(dict.fromkeys(methods))


def method_label(method: str, negative_prompt: bool) -> str:
    return f"{method}+neg" if negative_prompt else method
