"""The promise beside the measurement: what a pack's calibration says a calibrated setting
will do (the share of held-out dilemmas favouring each value, read off the calibration
half's curve) against the share the choice instrument measured, per value.

Two readings, because the two halves are different dilemmas: the share itself (what the
product shows: "favoured on 78% of held-out dilemmas"), and the lift over unsteered on each
half (what the push adds). The halves' own unsteered shares are reported too: they bound how
close a per-value share can land.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conva_mlx.packs.calibration import Calibration

CLOSE = 0.1  # "lands within 0.1": the bar for a promised share
_EPS = 1e-9


def promise_check(cal: Calibration, label: str, method: str, strength: float,
                  favoured: dict[str, float], unsteered: dict[str, float]) -> dict[str, Any] | None:
    """Per value: promised and measured share, the halves' unsteered shares and the lifts;
    None where the calibration promises nothing for this setting (no value calibrated, or
    the instruction where only the push alone was measured)."""
    instructed = method == "ica+calibrated"
    rows: dict[str, Any] = {}
    for v, measured in favoured.items():
        vc = cal.value(v)
        if vc is None or (instructed and not vc.has_instructed):
            continue
        promised = vc.effect_at(strength, instructed)
        base_cal = vc.unsteered_favoured  # the lift is over no steering on both halves
        rows[v] = {"promised": round(promised, 4), "measured": round(measured, 4),
                   "gap": round(measured - promised, 4),
                   "unsteered_calibration": round(base_cal, 4),
                   "unsteered_here": round(unsteered[v], 4),
                   "lift_promised": round(promised - base_cal, 4),
                   "lift_measured": round(measured - unsteered[v], 4)}
    if not rows:
        return None

    def close(key_a: str, key_b: str) -> tuple[int, float]:
        gaps = [abs(r[key_a] - r[key_b]) for r in rows.values()]
        return sum(g <= CLOSE + _EPS for g in gaps), round(float(np.mean(gaps)), 4)

    within, gap = close("promised", "measured")
    halves, halves_gap = close("unsteered_calibration", "unsteered_here")
    lifts, lift_gap = close("lift_promised", "lift_measured")
    return {"setting": label, "strength": strength, "instructed": instructed,
            "calibration_n": {v: cal.values[v].n for v in rows}, "rows": rows,
            "within": within, "mean_abs_gap": gap,
            "unsteered_within": halves, "unsteered_mean_abs_gap": halves_gap,
            "lift_within": lifts, "lift_mean_abs_gap": lift_gap}


def render_promise(p: dict[str, Any], split: str) -> list[str]:
    """The markdown table of one setting's promise."""
    n = len(p["rows"])
    lines = ["", f"Promise of {p['setting']} (the pack's calibration, read at strength "
                 f"{p['strength']:g}{' with the instruction' if p['instructed'] else ''}) "
                 f"against this run's {split} half: share of dilemmas favouring the value.",
             *(["(This is the half the calibration was measured on: in-sample.)"]
               if split == "calibration" else []),
             "", "| value | promised | measured | gap | unsteered: calibration / here | "
                 "lift: promised / measured |", "|---|---|---|---|---|---|"]
    for v, r in p["rows"].items():
        lines.append(f"| {v} | {r['promised']:.2f} | {r['measured']:.2f} | {r['gap']:+.2f} | "
                     f"{r['unsteered_calibration']:.2f} / {r['unsteered_here']:.2f} | "
                     f"{r['lift_promised']:+.2f} / {r['lift_measured']:+.2f} |")
    lines += ["", f"Within {CLOSE:g}: {p['within']} of {n} values (mean |gap| "
                  f"{p['mean_abs_gap']:.3f}); the halves' unsteered shares: "
                  f"{p['unsteered_within']} of {n} ({p['unsteered_mean_abs_gap']:.3f}); the "
                  f"lifts: {p['lift_within']} of {n} ({p['lift_mean_abs_gap']:.3f})."]
    return lines
