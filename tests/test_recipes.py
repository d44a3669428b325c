"""Extraction recipes: recorded in packs, followed by extraction, read back; the
mean-difference direction sized by the probe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from conva_mlx.cli.main import cli
from conva_mlx.errors import ConvaError
from conva_mlx.extraction import ExtractOptions, extract_pack
from conva_mlx.models.loading import LoadedModel
from conva_mlx.packs.pack import PACK_JSON, Pack, load_pack
from conva_mlx.packs.save import save_pack
from conva_mlx.probes.linear import C_GRID, choose_c, fit_probe
from conva_mlx.probes.perturbation import HalfSpaces, logit, minimal_delta
from conva_mlx.probes.recipe import ACCURACY, PAPER, PAPER_P0, TEMPLATED, Recipe, get_recipe
from conva_mlx.steering import GenOptions, SteerConfig, SteeringSession, Target
from conva_mlx.steering.hooks import MIN_ALIGNMENT, layer_plans, mean_diff_moves

RNG = np.random.default_rng(3)


def test_the_middle_block_scales_with_depth_as_the_reference_steers() -> None:
    assert PAPER.middle_block(32) == list(range(10, 26))  # Llama-2-7b / Llama-3-8B: 10-25
    assert PAPER.middle_block(30) == list(range(9, 24))  # SmolLM2-135M
    assert PAPER.middle_block(48)[0] == 14 and PAPER.middle_block(48)[-1] == 37
    assert PAPER.middle_block(2) == [1]


def test_recipe_json_round_trips_and_unknown_names_are_refused() -> None:
    for recipe in (ACCURACY, PAPER, TEMPLATED):
        assert Recipe.from_json(json.loads(json.dumps(recipe.to_json())), "x") == recipe
    with pytest.raises(ConvaError, match="unknown recipe 'nope'"):
        get_recipe("nope")
    with pytest.raises(ConvaError, match="unknown direction"):
        Recipe("bad", "", direction="sideways")  # type: ignore[arg-type]


def test_paper_p0_is_per_value_and_switches_under_the_negative_prompt() -> None:
    assert PAPER.p0_for("security") == 0.975
    assert PAPER.p0_for("conformity", negative_prompt=True) == 0.70
    assert ACCURACY.p0_for("security") == 0.95 == ACCURACY.p0_for("security", True)


def test_raw_and_standardised_fits_are_both_returned_in_raw_space() -> None:
    x = RNG.normal(size=(80, 16)) * np.linspace(0.1, 10, 16)
    y = (x[:, 3] + 0.05 * x[:, 15] > 0).astype(float)
    for standardise in (False, True):
        w, b = fit_probe(x, y, 1.0, standardise)
        acc = (((x @ w + b) > 0) == (y > 0.5)).mean()
        assert acc > 0.9
    w_raw, _ = fit_probe(x, y, 1.0, False)
    w_std, _ = fit_probe(x, y, 1.0, True)
    assert not np.allclose(w_raw, w_std, rtol=0.1)  # the penalty acts on different scales


def test_c_is_chosen_from_the_grid_by_held_out_log_loss() -> None:
    pos = RNG.normal(size=(40, 8)) + 0.3
    neg = RNG.normal(size=(40, 8)) - 0.3
    assert choose_c(pos, neg, standardise=True, seed=0) in C_GRID


def test_mean_diff_delta_moves_along_d_and_lands_exactly_on_p0() -> None:
    hidden = 24
    w = RNG.normal(size=hidden).astype(np.float32)
    caa = (w + RNG.normal(size=hidden) * 2).astype(np.float32)
    moves = mean_diff_moves(w[None], caa[None])
    d = caa / np.linalg.norm(caa)
    np.testing.assert_allclose(moves[0], d, atol=1e-6)
    e = (-w * 0.3).astype(np.float32)
    b = 0.2
    for away, p0 in ((False, 0.9), (True, 0.8)):
        cons = HalfSpaces.from_probes(mx.array(w[None]), mx.array(np.array([b], np.float32)),
                                      [p0], [away], mx.array(moves))
        start = (w * 2).astype(np.float32) if away else e
        delta = np.array(minimal_delta(mx.array(start), cons))
        target = logit(1 - p0) if away else logit(p0)
        assert math.isclose(float((start + delta) @ w) + b, target, abs_tol=1e-4)
        cos = float(delta @ d) / float(np.linalg.norm(delta))
        assert math.isclose(abs(cos), 1.0, abs_tol=1e-5)  # parallel to d
        assert (cos > 0) != away
        # the minimal perturbation is shorter: the price of moving along d
        proj = np.array(minimal_delta(mx.array(start), HalfSpaces.from_probes(
            mx.array(w[None]), mx.array(np.array([b], np.float32)), [p0], [away])))
        assert np.linalg.norm(proj) <= np.linalg.norm(delta) + 1e-5


def test_a_mean_difference_orthogonal_to_the_probe_falls_back_to_the_probe() -> None:
    w = np.array([[1.0, 0.0, 0.0]], np.float32)
    caa = np.array([[MIN_ALIGNMENT / 2, 1.0, 0.0]], np.float32)
    np.testing.assert_allclose(mean_diff_moves(w, caa)[0], [1.0, 0.0, 0.0])


@pytest.fixture(scope="module")
def paper_pack(default_lm: LoadedModel) -> Pack:
    return extract_pack(default_lm, ["benevolence"],
                        opts=ExtractOptions(recipe=PAPER, with_gate=False))


def test_the_paper_recipe_steers_the_middle_block_with_its_p0(
        paper_pack: Pack, default_lm: LoadedModel) -> None:
    entry = paper_pack.value("benevolence")
    assert entry.layers == PAPER.middle_block(default_lm.num_layers)
    assert entry.default_p0 == PAPER_P0["benevolence"]
    assert paper_pack.recipe == PAPER


def test_a_pack_records_its_recipe_and_old_packs_read_as_accuracy(
        paper_pack: Pack, tmp_path: Path) -> None:
    path = save_pack(paper_pack, tmp_path / "paper")
    meta = json.loads((path / PACK_JSON).read_text())
    assert meta["recipe"]["name"] == "paper"
    assert "Recipe: `paper`" in (path / "README.md").read_text()
    assert load_pack(path).recipe == PAPER
    del meta["recipe"]  # a pack from before recipes existed
    (path / PACK_JSON).write_text(json.dumps(meta))
    assert load_pack(path).recipe == ACCURACY


def test_the_direction_comes_from_the_config_or_the_pack_recipe(
        paper_pack: Pack, default_lm: LoadedModel) -> None:
    targets = [Target("benevolence", 0.95)]
    plain = layer_plans(paper_pack, SteerConfig(targets, method="conva"), targets)
    assert all(p.cons.moves is None for p in plain)
    along = layer_plans(paper_pack, SteerConfig(targets, direction="mean-diff",
                                                method="conva"), targets)
    assert all(p.cons.moves is not None for p in along)
    session = SteeringSession(default_lm, paper_pack)
    prompt = "Should I lend my savings to my brother or keep them for my own plans?"
    a = session.generate(prompt, SteerConfig(targets, gate=False, method="conva"))
    b = session.generate(prompt, SteerConfig(targets, gate=False, direction="mean-diff",
                                             method="conva"))
    # along the mean difference the step is longer for the same probe reading
    assert b.layers[0].delta_norm >= a.layers[0].delta_norm
    assert all(r.p_after["benevolence"] >= 0.95 - 1e-3 for r in b.layers)


def test_eval_recipe_extracts_its_pack_once_and_reuses_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["eval", "--recipe", "paper", "--values", "benevolence", "--n", "1",
            "--methods", "conva", "--split", "calibration", "--max-tokens", "4",
            "--no-general", "--judge", "offline-v1", "--out", str(out)]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    pack_json = out / "pack-paper" / PACK_JSON
    stamp = pack_json.stat().st_mtime_ns
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"]["name"] == "paper"
    assert results["prompts"].startswith("calibration")
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert pack_json.stat().st_mtime_ns == stamp
    wrong = CliRunner().invoke(cli, [*args[:1], "--pack", str(out / "pack-paper"),
                                     "--recipe", "accuracy", *args[3:]])
    assert wrong.exit_code != 0 and "made with recipe 'paper'" in wrong.output


def test_generated_positions_only_batches_like_one_prompt_and_reaches_p0(
        paper_pack: Pack, default_lm: LoadedModel) -> None:
    session = SteeringSession(default_lm, paper_pack)
    cfg = SteerConfig([Target("benevolence", 0.97)], gate=False, positions="generated",
                      method="conva")
    prompts = ["Should I spend Sunday helping my sister move house or finish my own project?",
               "Should I keep the money I found?"]
    one = [session.generate(p, cfg, GenOptions(max_tokens=8)) for p in prompts]
    batch = session.generate_batch(prompts, cfg, GenOptions(max_tokens=8))
    assert [r.tokens for r in batch] == [r.tokens for r in one]
    assert all(r.p_after["benevolence"] >= 0.97 - 1e-3 for r in one[0].layers)
    every = session.generate(prompts[0], SteerConfig([Target("benevolence", 0.97)], gate=False,
                                                     method="conva"),
                             GenOptions(max_tokens=8))
    # the prompt's other positions stay plain, so later blocks measure other deltas
    assert [r.delta_norm for r in every.layers] != [r.delta_norm for r in one[0].layers]
    with pytest.raises(ConvaError, match="prompt-mode setting"):
        SteerConfig(["benevolence"], mode="token", positions="generated", method="conva")
