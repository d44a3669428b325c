"""Dose-responses from choice scores: per setting (and value) the own-dilemma shift, the share
favouring the value, a fluency proxy and the push relative to the hidden state, |delta| / |h|.

Fluency is the change of log p(both written actions) in nats, halved (the instrument's own
proxy: a push that breaks the text makes both actions less likely). |h| is the unsteered norm
at the prompt's last token, averaged over the blocks the setting pushes (AxBench and Im & Li
find the effect tracks |delta| / |h|, which the probe's margin does not)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import mlx.core as mx
import numpy as np

from conva_mlx.evaluation.choices import CALIBRATED_SETTINGS
from conva_mlx.models.layers import hooked_blocks
from conva_mlx.packs.pack import Pack
from conva_mlx.steering import SteerConfig, SteeringSession
from conva_mlx.steering.hooks import calibrated_blocks

Record = dict[str, Any]


def hidden_norms(session: SteeringSession, prompts: list[str]) -> np.ndarray:
    """Mean |h| at the prompt's last token per block (unsteered), over `prompts`."""
    model = session.lm.model
    n_layers = session.lm.num_layers
    sums = np.zeros(n_layers)
    seen: dict[int, float] = {}

    def grab(k: int, h: mx.array) -> mx.array:
        seen[k] = float(mx.linalg.norm(h[0, -1].astype(mx.float32)))
        return h

    for p in prompts:
        tokens = session.prepare(p, SteerConfig(method="none")).tokens
        with hooked_blocks(model, {k: grab for k in range(n_layers)}):
            mx.eval(model(tokens[None]))
        sums += np.array([seen[k] for k in range(n_layers)])
    return sums / max(1, len(prompts))


def steered_blocks(pack: Pack, method: str, value: str) -> list[int]:
    """The blocks a setting pushes for `value` (calibrated: where the engine adds it)."""
    if method in CALIBRATED_SETTINGS:
        return sorted(calibrated_blocks(pack, SteerConfig([value], method="calibrated"), value))
    return list(pack.value(value).layers)


def fluency_change(row: Record, base: Record) -> float:
    """Half the change of log p(value action) + log p(competing action), in nats."""
    return (float(row["ll_value"]) + float(row["ll_competing"])
            - float(base["ll_value"]) - float(base["ll_competing"])) / 2.0


def dose_row(rows: list[Record], base: dict[str, Record], pack: Pack | None,
             norms: np.ndarray | None) -> Record:
    """One setting's summary over `rows` (own-dilemma likelihood scores, paired with `base`)."""
    rows = [r for r in rows if r["id"] in base]
    shift = np.array([r["score"] - base[r["id"]]["score"] for r in rows])
    fav = np.array([r["score"] > 0 for r in rows], dtype=float)
    flu = np.array([fluency_change(r, base[r["id"]]) for r in rows])
    ratios = []
    if pack is not None and norms is not None:
        h_mean: dict[tuple[str, str], float | None] = {}  # the blocks depend on these two only
        for r in rows:
            where = (r["method"], r["value"])
            if where not in h_mean:
                blocks = steered_blocks(pack, *where)
                h_mean[where] = float(np.mean(norms[blocks])) if blocks else None
            h = h_mean[where]
            if h and r.get("delta_norm"):
                ratios.append(float(r["delta_norm"]) / h)
    return {"n": len(rows),
            "shift": round(float(shift.mean()), 4) if rows else None,
            "favoured": round(float(fav.mean()), 4) if rows else None,
            "unsteered_favoured": round(float(np.mean(
                [base[r["id"]]["score"] > 0 for r in rows])), 4) if rows else None,
            "fluency": round(float(flu.mean()), 4) if rows else None,
            "delta_norm": round(float(np.mean([r.get("delta_norm") or 0.0 for r in rows])), 4)
            if rows else None,
            "delta_over_h": round(float(np.mean(ratios)), 5) if ratios else 0.0}


def own_rows(records: Iterable[Record]) -> tuple[dict[tuple[str, float | None], list[Record]],
                                                   dict[str, Record]]:
    """Likelihood scores split into steered rows on their own value's dilemmas, per
    (method, strength), and the unsteered baseline by dilemma id."""
    settings: dict[tuple[str, float | None], list[Record]] = defaultdict(list)
    base: dict[str, Record] = {}
    for r in records:
        if r.get("form") != "likelihood":
            continue
        if r["method"] == "none":
            base[r["id"]] = r
        elif r["steered"] == r["value"]:
            settings[(r["method"], r["strength"])].append(r)
    return settings, base
