"""The choice instrument: log-likelihoods under steering, letter choices, paired shifts."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from conva_mlx.cli.main import cli
from conva_mlx.errors import ConvaError
from conva_mlx.evaluation.choices import (
    ChoiceItem,
    MethodSetting,
    letter_ids,
    letter_prompt,
    letter_shares,
    load_choice_items,
    parse_settings,
    score_letter,
)
from conva_mlx.evaluation.promise import promise_check
from conva_mlx.evaluation.stats import paired_shift
from conva_mlx.models.loading import LoadedModel
from conva_mlx.packs.calibration import Calibration, CurvePoint, ValueCalibration
from conva_mlx.packs.pack import Pack, load_pack
from conva_mlx.steering import SteerConfig, SteeringSession
from conva_mlx.steering.reports import GateReport
from conva_mlx.values import VALUE_NAMES

DILEMMA = ("My coworker is overwhelmed and asked me to help her finish a report tonight, "
           "but I planned to relax. What should I do?")
HELP = "You should stay late and help her finish the report."
RELAX = "You should keep your evening free and relax at home."


def plain_loglik(lm: LoadedModel, question: str, continuation: str) -> float:
    """Independent reference: one mlx-lm forward over prompt + continuation."""
    prompt = lm.chat_prompt([{"role": "user", "content": question}])
    p = list(lm.tokenizer.encode(prompt))
    c = list(lm.tokenizer.encode(continuation, add_special_tokens=False))
    logits = lm.model(mx.array([p + c]))[0].astype(mx.float32)
    logp = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
    return float(sum(logp[len(p) - 1 + i, t] for i, t in enumerate(c)))


def test_loglik_with_none_equals_a_plain_mlx_lm_forward(default_lm: LoadedModel) -> None:
    session = SteeringSession(default_lm)
    for cont in (HELP, RELAX):
        got = session.loglik(DILEMMA, cont, SteerConfig(method="none"))
        assert got == pytest.approx(plain_loglik(default_lm, DILEMMA, cont), abs=2e-3)


def test_loglik_batch_equals_one_at_a_time(default_lm: LoadedModel, small_pack: Pack) -> None:
    session = SteeringSession(default_lm, small_pack)
    requests = [(DILEMMA, [HELP, RELAX]), ("Should I report my friend for cheating?",
                                           ["You should report him.", "You should not."])]
    for cfg in (SteerConfig(method="none"), SteerConfig(["benevolence"], method="caa"),
                SteerConfig(["benevolence:0.99"], gate=False, method="conva")):
        batched = [s.logliks for s in session.loglik_batch(requests, cfg)]
        single = [[session.loglik(q, c, cfg) for c in cs] for q, cs in requests]
        np.testing.assert_allclose(batched, single, atol=2e-3)


def test_loglik_works_on_every_tiny_architecture(tiny_lm: LoadedModel) -> None:
    session = SteeringSession(tiny_lm)
    got = session.loglik("Hello there, how are you?", "Fine thanks", SteerConfig(method="none"))
    assert got == pytest.approx(plain_loglik(tiny_lm, "Hello there, how are you?",
                                             "Fine thanks"), abs=2e-3)


def test_closed_gate_gives_exactly_the_unsteered_likelihood(default_lm: LoadedModel,
                                                            small_pack: Pack) -> None:
    pack = copy.deepcopy(small_pack)
    assert pack.gate is not None
    pack.gate.threshold = 1.1  # never opens
    session = SteeringSession(default_lm, pack)
    gated = session.loglik_batch([(DILEMMA, [HELP, RELAX])],
                                 SteerConfig(["benevolence:0.999"], method="conva"))[0]
    assert gated.gate.used and not gated.gate.open and gated.layers == []
    plain = session.loglik_batch([(DILEMMA, [HELP, RELAX])], SteerConfig(method="none"))[0]
    assert gated.logliks == plain.logliks


def test_steering_moves_the_likelihood_and_token_mode_scores(default_lm: LoadedModel,
                                                           small_pack: Pack) -> None:
    session = SteeringSession(default_lm, small_pack)

    def lr(cfg: SteerConfig) -> float:
        a, b = session.loglik_batch([(DILEMMA, [HELP, RELAX])], cfg)[0].logliks
        return a - b

    base = lr(SteerConfig(method="none"))
    assert lr(SteerConfig(["benevolence"], method="caa", caa_coef=4.0)) != base
    token = session.loglik_batch([(DILEMMA, [HELP])],
                                 SteerConfig(["benevolence:0.99"], gate=False, mode="token",
                                             method="conva"))[0]
    assert token.layers and np.isfinite(token.logliks[0])


class _LetterBiased:
    """A stand-in session that always prefers the letter A, and records what it was asked."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def next_token_logits_batch(self, prompts: list[str], cfg: SteerConfig,
                                reply_prefix: str = "") -> list[tuple[mx.array, GateReport]]:
        assert reply_prefix == "("
        self.prompts += prompts
        logits = mx.zeros((8,))
        logits[1] = 3.0  # "A"
        return [(logits, GateReport(None, True, None, False)) for _ in prompts]


def test_letter_form_asks_both_orders_and_a_pure_letter_bias_scores_one_half() -> None:
    item = ChoiceItem("x-d-002", "benevolence", "hedonism", "Help or relax?", HELP, RELAX)
    fake = _LetterBiased()
    rows = score_letter(fake, [item], SteerConfig(method="none"), ([1], [2]))  # type: ignore[arg-type]
    assert fake.prompts == [letter_prompt(item, True), letter_prompt(item, False)]
    assert "(A) " + HELP in fake.prompts[0] and "(B) " + HELP in fake.prompts[1]
    assert rows[0]["score"] == pytest.approx(0.5)
    assert rows[0]["p_a"] > 0.9  # the bias itself is reported


def test_letter_ids_take_the_bare_and_the_spaced_letter(default_lm: LoadedModel) -> None:
    a, b = letter_ids(default_lm.tokenizer)
    enc = default_lm.tokenizer.encode
    assert enc("A", add_special_tokens=False)[0] in a and enc("B", add_special_tokens=False)[0] in b
    assert not set(a) & set(b)
    logits = mx.full((default_lm.tokenizer.vocab_size,), -30.0)
    logits[a[-1]] = 2.0  # all of A's mass on one of its forms
    logits[b[0]] = 2.0
    assert letter_shares(logits, (a, b)) == pytest.approx(0.5)


def test_intervals_narrow_with_more_dilemmas() -> None:
    rng = np.random.default_rng(1)
    widths = []
    for n in (10, 40, 160):
        base = rng.normal(0, 1, n)
        steered = base + 0.5 + rng.normal(0, 1, n)
        s = paired_shift([steered], [base])
        widths.append(s.hi - s.lo)
        assert s.lo <= s.mean <= s.hi and s.n == n
    assert widths[0] > widths[1] > widths[2]


def test_paired_shift_of_identical_scores_is_zero_with_a_zero_interval() -> None:
    s = paired_shift([[1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0]])
    assert (s.mean, s.lo, s.hi, s.moved) == (0.0, 0.0, 0.0, 0.0)


def test_settings_parse_strengths_and_refuse_bad_ones() -> None:
    got = parse_settings("none,caa,conva:0.99", strengths=None, caa_coef=2.0)
    assert [s.label for s in got] == ["none", "caa x2", "conva P0 0.99"]
    sweep = parse_settings("caa", strengths=[0.5, 1, 4])
    assert [s.strength for s in sweep] == [0.5, 1, 4]
    for bad in ("caa:-1", "conva:1.5", "ica:2", "bogus", "caa:x"):
        with pytest.raises(ConvaError):
            parse_settings(bad)
    with pytest.raises(ConvaError):
        parse_settings("conva", strengths=[2.0])  # a CAA coefficient is not a P0
    assert MethodSetting("caa", 2.0).config("power").caa_coef == 2.0
    both = parse_settings("ica+calibrated:0.5")[0]
    assert both.label == "ica+calibrated x0.5"
    cfg = both.config("power")
    assert (cfg.method, cfg.gate, cfg.instruct, cfg.strength) == ("calibrated", True, True, 0.5)
    assert MethodSetting("calibrated", 0.5).config("power").instruct is False
    with pytest.raises(ConvaError, match=r"strength must be in \(0, 8\]"):
        parse_settings("ica+calibrated:9")


def test_every_shipped_dilemma_has_its_two_actions() -> None:
    for split in ("test", "calibration"):
        items = load_choice_items(list(VALUE_NAMES), split)  # type: ignore[arg-type]
        assert len(items) == 300
        assert all(it.value_action != it.competing_action for it in items)


def test_choices_cli_prints_the_json_object_and_resumes(small_pack_dir: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "ch"
    args = ["choices", "--pack", str(small_pack_dir), "--values", "benevolence,power",
            "--methods", "none,caa", "--n", "3", "--out", str(out), "--json"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    obj = json.loads(first.stdout.strip().splitlines()[-1])
    assert obj["form"] == "likelihood" and obj["model"]
    caa = obj["methods"]["caa"]
    assert {"mean", "shift", "ci", "moved", "per_value"} <= set(caa)
    assert set(caa["per_value"]) == {"benevolence", "power"}
    assert obj["methods"]["none"]["shift"] == 0.0
    assert (out / "results.md").is_file() and (out / "shifts.png").is_file()
    assert (out / "profile.png").is_file()
    lines = (out / "choices.jsonl").read_text().splitlines()
    assert len(lines) == 6 + 6  # none on 6 dilemmas, caa on each value's 3
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert (out / "choices.jsonl").read_text().splitlines() == lines  # nothing rescored
    assert json.loads(again.stdout.strip().splitlines()[-1]) == obj


def test_choices_leakage_scores_every_value_under_every_push(small_pack_dir: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "leak"
    res = CliRunner().invoke(cli, ["choices", "--pack", str(small_pack_dir), "--values",
                                   "benevolence,power", "--methods", "caa", "--n", "2",
                                   "--leakage", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    leak = json.loads(res.stdout.strip().splitlines()[-1])["leakage"]["caa"]
    assert set(leak["rows"]) == {"benevolence", "power"}
    full = json.loads((out / "results.json").read_text())["leakage"]["caa"]["rows"]
    assert set(full["power"]["cells"]) == {"benevolence", "power"}
    assert (out / "leakage-caa.png").is_file()


def test_choices_sets_each_calibrated_setting_beside_its_promise(full_pack_dir: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "promise"
    res = CliRunner().invoke(cli, ["choices", "--pack", str(full_pack_dir), "--values",
                                   "benevolence,power", "--methods",
                                   "none,caa,calibrated:0.5,ica+calibrated", "--n", "3",
                                   "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout.strip().splitlines()[-1])
    cal = load_pack(full_pack_dir).calibration
    assert cal is not None and cal.instruct  # the shipped calibration, measured with it
    promises = {p["setting"]: p for p in obj["promise"]}
    assert set(promises) == {"calibrated x0.5", "ica+calibrated"}  # not CAA's
    for label, strength, instructed in (("calibrated x0.5", 0.5, False),
                                        ("ica+calibrated", 1.0, True)):
        p = promises[label]
        assert (p["strength"], p["instructed"]) == (strength, instructed)
        gaps = []
        for v, row in p["rows"].items():
            measured = obj["methods"][label]["per_value"][v]
            assert row["measured"] == pytest.approx(measured["favoured"])
            assert row["promised"] == pytest.approx(cal.values[v].effect_at(strength, instructed),
                                                    abs=1e-4)
            assert row["unsteered_here"] == pytest.approx(obj["profile"][v]["favoured"])
            assert row["lift_measured"] == pytest.approx(row["measured"] - row["unsteered_here"],
                                                         abs=1e-3)
            gaps.append(abs(row["gap"]))
        assert p["within"] == sum(g <= 0.1 + 1e-9 for g in gaps)
        assert p["mean_abs_gap"] == pytest.approx(float(np.mean(gaps)), abs=1e-3)
    assert "Promise of ica+calibrated" in (out / "results.md").read_text()


def test_no_promise_where_the_calibration_did_not_measure_the_setting() -> None:
    cal = Calibration("f" * 16, "h", "accuracy", 1.5, {"power": ValueCalibration(
        {"power": 1.0}, 0.4, [CurvePoint(1.0, 1.5, 0.6, -1.0)], 10)})
    assert promise_check(cal, "ica+calibrated", "ica+calibrated", 1.0, {"power": 0.5},
                         {"power": 0.4}) is None  # the push alone's curve only
    assert promise_check(cal, "calibrated", "calibrated", 1.0, {"benevolence": 0.5},
                         {"benevolence": 0.4}) is None  # a value it never calibrated
    p = promise_check(cal, "calibrated", "calibrated", 0.5, {"power": 0.45}, {"power": 0.2})
    assert p is not None and p["rows"]["power"]["promised"] == pytest.approx(0.5)
    assert (p["within"], p["unsteered_within"], p["lift_within"]) == (1, 0, 0)
    assert p["rows"]["power"]["lift_measured"] == pytest.approx(0.25)


def test_choices_cli_refuses_bad_input(tmp_path: Path) -> None:
    for args, msg in ((["--methods", "caa:0"], "coefficient"),
                      (["--methods", "none", "--n", "0"], "--n"),
                      (["--methods", "none", "--strengths", "a,b"], "numbers"),
                      (["--methods", "none", "--values", "kindness"], "unknown value")):
        res = CliRunner().invoke(cli, ["choices", "--out", str(tmp_path / "x"), *args])
        assert res.exit_code != 0
        assert msg in res.output and "Traceback" not in res.output


def test_choices_refuses_a_folder_that_is_not_a_choices_run(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    res = CliRunner().invoke(cli, ["choices", "--methods", "none", "--values", "power",
                                   "--n", "1", "--out", str(mine)])
    assert res.exit_code != 0 and "is not empty" in res.output
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
