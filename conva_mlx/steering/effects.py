"""What a strength means: the effect a pack's calibration expects at the strength in use."""

from __future__ import annotations

from conva_mlx.packs.pack import Pack
from conva_mlx.steering.config import SteerConfig, Target
from conva_mlx.steering.hooks import calibrated_strength
from conva_mlx.steering.reports import ExpectedEffect


def expected_effects(pack: Pack | None, cfg: SteerConfig, targets: list[Target]
                     ) -> list[ExpectedEffect]:
    """The calibrated method's expected effect per value steered toward (none for other
    methods, values steered away from, a pack without a calibration, or with the
    instruction where the calibration measured the push alone)."""
    if pack is None or pack.calibration is None or cfg.method != "calibrated":
        return []
    instructed = bool(cfg.instruct)
    out = []
    for t in targets:
        cal = pack.calibration.value(t.value)
        if cal is None or t.away or (instructed and not cal.has_instructed):
            continue
        s = calibrated_strength(pack, cfg, t)
        out.append(ExpectedEffect(t.value, s, cal.effect_at(s, instructed), cal.unsteered_favoured,
                                  cal.max_effect(instructed), instructed))
    return out
