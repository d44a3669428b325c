"""Fair strengths: the best CSR whose fluency stays within 3 points of unsteered."""

from __future__ import annotations

import pytest

from conva_mlx.evaluation.strength import choose_fair


def _row(method: str, label: str, csr: float, fr: float) -> dict[str, object]:
    return {"method": method, "label": label, "csr": csr, "fr": fr}


def test_the_strongest_setting_that_keeps_fluency_is_chosen_per_method() -> None:
    rows = [_row("none", "-", 0.15, 0.98),
            _row("caa", "x1", 0.30, 0.96), _row("caa", "x2", 0.45, 0.90),
            _row("conva", "P0=0.9", 0.20, 0.98), _row("conva", "P0=0.99", 0.25, 0.95)]
    chosen = choose_fair(rows)
    assert chosen["caa"]["label"] == "x1"  # x2 loses 8 points of fluency
    assert chosen["conva"]["label"] == "P0=0.99"  # exactly 3 points down is allowed


def test_ties_go_to_the_weaker_setting_and_a_method_may_have_none() -> None:
    rows = [_row("none", "-", 0.1, 1.0), _row("caa", "x1", 0.3, 0.99),
            _row("caa", "x2", 0.3, 0.98), _row("conva", "P0=0.99", 0.5, 0.5)]
    chosen = choose_fair(rows)
    assert chosen["caa"]["label"] == "x1" and "conva" not in chosen
    with pytest.raises(ValueError, match="exactly one 'none'"):
        choose_fair(rows[1:])
