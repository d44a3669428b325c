"""Fair strengths: CAA's coefficient and ConVA's P0 chosen by the same rule.

On the calibration dilemmas, each method's chosen setting is the one with the best CSR
whose fluency stays within `slack` (3 points) of the unsteered model's on the same prompts;
ties go to the weaker setting (listed first). Report the chosen settings on the test half.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

FR_SLACK = 0.03


def choose_fair(rows: Sequence[dict[str, Any]], slack: float = FR_SLACK
                ) -> dict[str, dict[str, Any]]:
    """Rows {"method", "csr", "fr", ...} (one "none" row) -> the chosen row per method."""
    base = [r for r in rows if r["method"] == "none"]
    if len(base) != 1:
        raise ValueError("the sweep needs exactly one 'none' row (the unsteered baseline)")
    floor = base[0]["fr"] - slack - 1e-9
    chosen: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["method"] == "none" or r["fr"] is None or r["csr"] is None or r["fr"] < floor:
            continue
        best = chosen.get(r["method"])
        if best is None or r["csr"] > best["csr"]:
            chosen[r["method"]] = r
    return chosen
