"""Extraction: the shallow-first gate search gives the gate a search of every layer gives."""

from __future__ import annotations

import numpy as np
import pytest

from conva_mlx.data.dataset import ValueData
from conva_mlx.extraction import (
    ExtractOptions,
    gate_candidate_layers,
    gate_layer_stages,
    gate_texts,
    spread,
)
from conva_mlx.models.loading import LoadedModel
from conva_mlx.packs.pack import Pack
from conva_mlx.probes.capture import CaptureOptions, capture


@pytest.mark.parametrize("num_layers", [2, 3, 4, 8, 12, 24, 28, 30, 36, 64])
def test_gate_stages_partition_the_candidates_shallow_first(num_layers: int) -> None:
    candidates = gate_candidate_layers(num_layers)
    stages = gate_layer_stages(candidates)
    assert [layer for group in stages for layer in group] == candidates
    assert all(group for group in stages)
    if len(candidates) >= 6:
        assert len(stages) == 3 and len(stages[0]) < len(candidates) / 3


@pytest.mark.parametrize("n", [0, 1, 3, 7, 10, 11, None])
def test_spread_takes_n_items_evenly_in_order(n: int | None) -> None:
    items = list(range(10))
    got = spread(items, n)
    assert got == (items if n is None or n >= 10 else sorted(set(got)))
    assert len(got) == (10 if n is None else min(n, 10))
    if n == 3:
        assert got == [0, 3, 6]


def test_the_gate_trains_on_fewer_related_pairs_and_tests_on_the_same_queries() -> None:
    data = ValueData()
    full = gate_texts(data, ["benevolence", "power"])
    few = gate_texts(data, ["benevolence", "power"], 20)
    assert (full.n_related, few.n_related) == (400, 80)
    assert set(few.texts[:few.n_related]) <= set(full.texts[:full.n_related])
    # Everything after the related sentences (dilemmas, queries, beyond) is unchanged.
    assert few.texts[few.n_related:] == full.texts[full.n_related:]
    assert (few.dilemma_test, few.query_splits[2].tolist()) == \
        (full.dilemma_test, full.query_splits[2].tolist())


def test_staged_gate_equals_full_search(default_lm: LoadedModel, small_pack: Pack) -> None:
    """small_pack's gate (staged search) is the gate of a search over all 27 candidates."""
    sets = gate_texts(ValueData(), ["benevolence", "power"],
                      ExtractOptions().gate_related_pairs)
    layers = gate_candidate_layers(default_lm.num_layers)
    states = capture(default_lm, sets.texts,
                     CaptureOptions(layers=tuple(layers), chat_template=True),
                     show_progress=False)
    full = sets.fit(states, layers)
    staged = small_pack.gate
    assert staged is not None
    assert staged.layer == full.layer
    assert staged.threshold == pytest.approx(full.threshold, abs=1e-4)
    np.testing.assert_allclose(staged.weight, full.weight, rtol=1e-3, atol=1e-5)
    # The staged search scored fewer layers only because it stopped at a perfect one.
    assert set(staged.layer_scores) <= set(full.layer_scores)
    if len(staged.layer_scores) < len(full.layer_scores):
        assert staged.layer_scores[staged.layer] == 1.0


def test_gate_queries_beyond_dilemmas_split_per_kind_and_are_reported(small_pack: Pack) -> None:
    from conva_mlx.data.dataset import GATE_KINDS
    from conva_mlx.probes.gate import kind_split

    queries = ValueData().gate_queries()
    kinds = [q.kind for q in queries]
    assert set(kinds) == set(GATE_KINDS)
    train, calib, test = kind_split(kinds)
    assert sorted(train + calib + test) == list(range(len(queries)))
    for kind in GATE_KINDS:  # every kind is in every part, about 2:1:1
        n = kinds.count(kind)
        assert sum(kinds[i] == kind for i in test) == pytest.approx(n / 4, abs=1)
        assert sum(kinds[i] == kind for i in calib) == pytest.approx(n / 4, abs=1)
    gate = small_pack.gate
    assert gate is not None
    # the pack has benevolence and power: their value-related queries, every neutral choice
    chosen = [q for q in queries if not q.related or q.value in ("benevolence", "power")]
    _, _, chosen_test = kind_split([q.kind for q in chosen])
    reported = sum(int(v["n"]) for k, v in gate.by_kind.items() if k.startswith("value-"))
    assert reported == sum(chosen[i].related for i in chosen_test) > 0
    assert gate.by_kind["neutral-choice"]["n"] == sum(kinds[i] == "neutral-choice" for i in test)
    assert 0.0 <= gate.by_kind["all"]["recall"] <= 1.0
