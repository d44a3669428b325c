"""The gated instruction (`instruct`): ICA's instruction joins the calibrated push only where
the gate opens, on the real default model with its full pack and shipped calibration, which
was measured with the instruction and makes instruction + push the default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conva_mlx.cli.main import cli
from conva_mlx.errors import ConvaError
from conva_mlx.models.loading import LoadedModel
from conva_mlx.packs.pack import load_pack
from conva_mlx.serving.protocol import Defaults, steering, steering_info
from conva_mlx.steering import GenOptions, SteerConfig, SteeringSession
from conva_mlx.steering.config import Target, ica_prefix

DILEMMA = ("Should Maya spend her savings on a trip around the world, or keep them to help "
           "her younger brother pay for his studies?")
UNRELATED = "What is 17 times 23?"
SHORT = GenOptions(max_tokens=12)
INSTRUCTED = SteerConfig(["benevolence"], instruct=True)
PUSH_ALONE = SteerConfig(["benevolence"], instruct=False)


@pytest.fixture(scope="module")
def session(default_lm: LoadedModel, full_pack_dir: Path) -> SteeringSession:
    return SteeringSession(default_lm, load_pack(full_pack_dir))


def test_the_instruction_joins_the_push_where_the_gate_opens(session: SteeringSession) -> None:
    got = session.generate(DILEMMA, INSTRUCTED, SHORT)
    assert got.gate.used and got.gate.open and got.layers
    assert got.instruction == ica_prefix("benevolence")
    # the same as writing the instruction by hand and pushing without a gate
    by_hand = session.generate(f"{got.instruction} {DILEMMA}",
                               SteerConfig(["benevolence"], gate=False, instruct=False), SHORT)
    assert got.tokens == by_hand.tokens
    assert got.prompt_tokens == by_hand.prompt_tokens
    push_alone = session.generate(DILEMMA, PUSH_ALONE, SHORT)
    assert got.tokens != push_alone.tokens
    assert got.prompt_tokens > push_alone.prompt_tokens
    # each promise comes from its own measured curve
    (alone_effect,), (effect,) = push_alone.expected, got.expected
    assert not alone_effect.instructed and effect.instructed
    cal = session.pack.calibration.values["benevolence"]  # type: ignore[union-attr]
    assert effect.favoured == pytest.approx(cal.effect_at(1.0, instructed=True))
    assert alone_effect.favoured == pytest.approx(cal.effect_at(1.0))
    assert got.summary().count("with the instruction") == 1  # said once, with the promise
    # the default (no `instruct` given) is the pack's: instruction + push
    default = session.generate(DILEMMA, SteerConfig(["benevolence"]), SHORT)
    assert default.tokens == got.tokens and default.instruction == got.instruction


def test_a_closed_gate_adds_neither_the_instruction_nor_the_push(
        session: SteeringSession) -> None:
    plain = session.generate(UNRELATED, SteerConfig(method="none"), SHORT)
    got = session.generate(UNRELATED, INSTRUCTED, SHORT)
    assert got.gate.used and not got.gate.open
    assert got.tokens == plain.tokens and got.layers == [] and got.instruction == ""
    assert got.prompt_tokens == plain.prompt_tokens
    assert json.loads(json.dumps(got.as_dict()))["instruction"] is None


def test_a_batch_instructs_only_its_open_rows(session: SteeringSession) -> None:
    batched = session.generate_batch([DILEMMA, UNRELATED], INSTRUCTED, SHORT)
    alone = [session.generate(p, INSTRUCTED, SHORT) for p in (DILEMMA, UNRELATED)]
    assert [r.gate.open for r in batched] == [True, False]
    assert [r.instruction != "" for r in batched] == [True, False]
    assert [r.tokens for r in batched] == [r.tokens for r in alone]


def test_scores_read_the_instructed_prompt(session: SteeringSession) -> None:
    reply = " I would help my brother."
    got = session.loglik(DILEMMA, reply, INSTRUCTED)
    by_hand = session.loglik(f"{ica_prefix('benevolence')} {DILEMMA}", reply,
                             SteerConfig(["benevolence"], gate=False, instruct=False))
    assert got == pytest.approx(by_hand, abs=1e-3)
    assert got != pytest.approx(session.loglik(DILEMMA, reply, PUSH_ALONE), abs=1e-3)


def test_the_instruction_goes_with_a_gated_push_only() -> None:
    for method in ("caa", "ica", "none"):
        with pytest.raises(ConvaError, match="gated push"):
            SteerConfig(["benevolence"], method=method, instruct=True)


def test_the_cli_reports_the_instruction(full_pack_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["generate", "--pack", str(full_pack_dir), "--value",
                                      "benevolence", "--instruct", "--max-tokens", "4",
                                      "--json", DILEMMA])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{"):])
    assert out["instruction"].startswith("You have high level of benevolence.")
    assert [e["instructed"] for e in out["expected"]] == [True]
    alone = CliRunner().invoke(cli, ["generate", "--pack", str(full_pack_dir), "--value",
                                     "benevolence", "--no-instruct", "--max-tokens", "4",
                                     "--json", DILEMMA])
    assert alone.exit_code == 0, alone.output
    out = json.loads(alone.output[alone.output.index("{"):])
    assert out["instruction"] is None and not out["expected"][0]["instructed"]
    bad = CliRunner().invoke(cli, ["generate", "--pack", str(full_pack_dir), "--value",
                                   "benevolence", "--method", "caa", "--instruct", DILEMMA])
    assert bad.exit_code != 0 and "gated push" in bad.output


def test_serve_instruct_sets_the_default_of_gated_requests_only() -> None:
    defaults = Defaults(strength=0.5, instruct=True)
    cfg = steering({"steering": {"values": {"benevolence": None}}}, defaults)
    assert (cfg.method, cfg.instruct, cfg.strength) == ("calibrated", True, 0.5)
    cfg = steering({"steering": {"values": {"benevolence": None}, "instruct": False,
                                 "strength": 2}}, defaults)
    assert (cfg.instruct, cfg.strength) == (False, 2.0)
    for method in ("caa", "ica", "none"):  # the instruction goes with a gated push only
        assert not steering({"steering": {"values": {"power": None}, "method": method}},
                            defaults).instruct
    # no --instruct / --no-instruct: the request leaves it to the pack's default
    assert steering({"steering": {"values": {"power": None}}}, Defaults()).instruct is None
    assert steering({"steering": {"values": {"power": None}}},
                    Defaults(instruct=False)).instruct is False
    served = Defaults([Target("power")], strength=0.5, instruct=True).config()
    assert (served.instruct, served.strength) == (True, 0.5)


def test_an_eval_run_generates_with_the_instruction(session: SteeringSession,
                                                    tmp_path: Path) -> None:
    from conva_mlx.evaluation.runner import run_eval
    from conva_mlx.evaluation.settings import EvalContext, EvalOptions
    from conva_mlx.evaluation.store import JsonlStore
    from tests.test_eval import CountingJudge

    opts = EvalOptions(values=["benevolence"], methods=["ica+calibrated"], n=1, max_tokens=6,
                       strength=0.5, repetition_penalty=1.2, general=False,
                       show_progress=False)
    run_eval(EvalContext(session, tmp_path, lambda: CountingJudge()), opts)
    rec = next(iter(JsonlStore(tmp_path / "generations.jsonl").records.values()))
    want = session.generate(rec["prompt"], SteerConfig(["benevolence"], strength=0.5,
                                                       instruct=True),
                            GenOptions(max_tokens=6, repetition_penalty=1.2))
    assert rec["text"] == want.text and rec["method"] == "ica+calibrated"


def test_get_steering_shows_the_expected_effect_at_the_server_defaults(
        session: SteeringSession) -> None:
    pack = session.pack
    assert pack is not None and pack.calibration is not None
    cal = pack.calibration.value("benevolence")
    assert cal is not None and cal.has_instructed  # the shipped calibration measured both
    half = steering_info(pack, Defaults(strength=0.5, instruct=False))
    assert half["defaults"]["strength"] == 0.5 and half["defaults"]["instruct"] is False
    assert steering_info(pack, Defaults())["defaults"]["instruct"] is True  # the pack's
    got = half["values"]["benevolence"]["expected"]
    assert got["strength"] == 0.5 and got["instructed"] is False
    assert got["favoured"] == pytest.approx(cal.effect_at(0.5), abs=1e-4)
    got = steering_info(pack, Defaults(strength=0.5, instruct=True))["values"]["benevolence"]
    assert got["expected"]["instructed"] is True
    assert got["expected"]["favoured"] == pytest.approx(cal.effect_at(0.5, True), abs=1e-4)
    assert got["expected_text"].endswith("with the instruction")


def test_a_request_without_a_strength_gets_the_calibrations_default(
        session: SteeringSession) -> None:
    # Qwen2.5-0.5B's calibration records the size blind readers chose (0.5 with the
    # instruction); here the default model's calibration is given that default for a while
    pack = session.pack
    assert pack is not None and pack.calibration is not None
    assert pack.calibration.strength == 1.0  # the default model's readers chose x1
    full = session.generate(DILEMMA, SteerConfig(["benevolence"]), SHORT)
    pack.calibration.strength = 0.5
    try:
        default = session.generate(DILEMMA, SteerConfig(["benevolence"]), SHORT)
        half = session.generate(DILEMMA, SteerConfig(["benevolence"], strength=0.5), SHORT)
        assert default.tokens == half.tokens and default.instruction == half.instruction
        assert default.tokens != full.tokens  # an explicit strength 1 is the full push
        assert session.generate(DILEMMA, SteerConfig(["benevolence"], strength=1.0),
                                SHORT).tokens == full.tokens
        (effect,) = default.expected
        assert effect.strength == 0.5 and effect.instructed
        info = steering_info(pack, Defaults())
        assert info["defaults"]["strength"] == 0.5 and info["defaults"]["instruct"] is True
        assert info["values"]["benevolence"]["expected"]["strength"] == 0.5
        assert steering_info(pack, Defaults(strength=1.0))["defaults"]["strength"] == 1.0
        from conva_mlx.evaluation.audit import default_setting

        assert default_setting(pack).label == "ica+calibrated x0.5"
        # eval measures what users get: its default strength is the pack's, recorded
        from conva_mlx.evaluation.settings import EvalContext, EvalOptions, generation_settings

        ctx = EvalContext(session, Path("unused"), lambda: None)  # type: ignore[arg-type,return-value]
        opts = EvalOptions(values=["benevolence"], methods=["ica+calibrated"])
        assert generation_settings(ctx, opts)["strength"] == 0.5
        assert opts.config("ica+calibrated", "benevolence", pack).strength is None
    finally:
        pack.calibration.strength = 1.0
