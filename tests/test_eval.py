"""Evaluation runner: resume, metrics, outputs, and steered next-token logits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest

from conva_mlx.errors import ConvaError
from conva_mlx.evaluation.items import load_items
from conva_mlx.evaluation.judges import Judgement, Verdict
from conva_mlx.evaluation.mcq import mcq_answer, mcq_letter_ids
from conva_mlx.evaluation.methods import steer_config
from conva_mlx.evaluation.runner import check_run_settings, run_eval
from conva_mlx.evaluation.settings import EvalContext, EvalOptions
from conva_mlx.evaluation.store import JsonlStore
from conva_mlx.models.loading import LoadedModel
from conva_mlx.packs.pack import Pack
from conva_mlx.probes.gate import dilemma_split
from conva_mlx.steering import GenOptions, SteerConfig, SteeringSession, Target


class CountingJudge:
    """A deterministic stand-in judge that counts its calls."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def judge(self, value: str, question: str, answer: str) -> Judgement:
        self.calls += 1
        return Judgement(Verdict(len(answer) % 2 == 0, "stub"), Verdict(bool(answer), "stub"))

    def judge_batch(self, items: list[tuple[str, str, str]]) -> list[Judgement]:
        return [self.judge(*item) for item in items]

    def describe(self) -> dict[str, Any]:
        return {"kind": "stub", "name": self.name, "agreement": None}


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def session(default_lm: LoadedModel, small_pack: Pack) -> SteeringSession:
    return SteeringSession(default_lm, small_pack)


def test_test_prompts_are_the_even_half_of_the_dilemmas() -> None:
    items = load_items(["benevolence"], n=3)
    assert len(items) == 3
    assert all(int(it.prompt_id.rsplit("-", 1)[1]) % 2 == 0 for it in items)
    _calib, test = dilemma_split([f"x-{i:03d}" for i in range(1, 7)])
    assert test == [1, 3, 5]


def test_prompts_file_records_are_used_and_capped(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"value": "power", "prompt": "a?"}, {"value": "power", "prompt": "b?", "id": "pb"},
        {"value": "power", "prompt": "c?"}, {"value": "benevolence", "prompt": "d?"}]))
    items = load_items(["power"], n=2, prompts_file=f)
    assert [(it.value, it.prompt_id, it.prompt) for it in items] == [
        ("power", "line-1", "a?"), ("power", "pb", "b?")]


def test_method_names_map_onto_steer_configs() -> None:
    assert steer_config("none", "power").method == "none"
    c = steer_config("conva-nogate", "power")
    assert (c.method, c.gate, c.probes) == ("conva", False, "controlled")
    c = steer_config("conva-uncontrolled", "power", negative_prompt=True)
    assert (c.method, c.gate, c.probes, c.negative_prompt) == ("conva", True, "uncontrolled", True)
    assert steer_config("caa", "power").method == "caa"
    assert steer_config("conva", "power", p0=0.99).targets[0].p0 == 0.99
    assert steer_config("conva", "power").targets[0].p0 is None  # the pack's default
    c = steer_config("ica+calibrated", "power", strength=0.5)
    assert (c.method, c.gate, c.instruct, c.strength) == ("calibrated", True, True, 0.5)
    c = steer_config("calibrated", "power")
    assert (c.method, c.instruct, c.strength) == ("calibrated", False, None)  # the pack's


def test_a_torn_last_line_is_ignored_and_repaired(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    store = JsonlStore(path)
    store.append({"key": "a", "x": 1})
    with open(path, "a") as f:
        f.write('{"key": "b", "x"')  # killed mid-write
    store = JsonlStore(path)
    assert list(store.records) == ["a"]
    store.append({"key": "c", "x": 3})
    assert list(JsonlStore(path).records) == ["a", "c"]


def test_interrupted_eval_resumes_without_redoing_generations(
        session: SteeringSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []  # one entry per prompt generated
    real_generate_batch = SteeringSession.generate_batch

    def counting_generate_batch(self: SteeringSession, prompts: list[str], cfg: SteerConfig,
                                opts: GenOptions | None = None) -> Any:
        calls.extend(f"{cfg.method}:{cfg.gate}:{p}" for p in prompts)
        return real_generate_batch(self, prompts, cfg, opts)

    monkeypatch.setattr(SteeringSession, "generate_batch", counting_generate_batch)
    opts = EvalOptions(values=["benevolence"], methods=["none", "conva-nogate"], n=2,
                       max_tokens=8, general=True, mcq_n=2, show_progress=False)
    judge = CountingJudge()

    def stop_after_three(done: int) -> None:
        if done == 3:
            raise Interrupt

    out = tmp_path / "run"
    with pytest.raises(Interrupt):
        run_eval(EvalContext(session, out, lambda: judge, on_generation=stop_after_three),
                 opts)
    # killed while saving the second batch (2 prompts each): 3 saved, 4 generated
    assert len(calls) == 4
    assert len(JsonlStore(out / "generations.jsonl").records) == 3
    interrupted = list(calls)

    first = run_eval(EvalContext(session, out, lambda: judge), opts)
    resumed = calls[len(interrupted):]
    assert len(resumed) == 1  # only the missing generation was made ...
    assert resumed[0] == interrupted[-1]  # ... the one lost with the killed batch
    assert judge.calls == 4
    again = run_eval(EvalContext(session, out, lambda: judge), opts)
    assert len(calls) == 5 and judge.calls == 4  # everything cached
    assert again.values == first.values
    assert again.general_ability == first.general_ability

    # the same numbers as an uninterrupted run
    fresh = run_eval(EvalContext(session, tmp_path / "fresh", lambda: CountingJudge()), opts)
    assert fresh.values == first.values

    cell = first.values["benevolence"]["conva-nogate"]
    assert cell.n == 2 and cell.gate_open_rate is None
    assert cell.delta_norm_mean is not None and cell.delta_norm_mean > 0
    assert cell.changed_vs_none is not None and 0.0 <= cell.changed_vs_none <= 1.0
    plain = first.values["benevolence"]["none"]
    assert plain.delta_norm_mean == 0.0 and plain.changed_vs_none == 0.0
    assert set(first.general_ability) == {"none", "conva-nogate"}
    assert first.general_ability["none"].n == 2
    for name in ("results.json", "results.md", "csr.png"):
        assert (out / name).is_file()
    md = (out / "results.md").read_text()
    assert "| benevolence |" in md and " / " in md


def test_negative_prompt_results_are_kept_apart(session: SteeringSession, tmp_path: Path
                                                ) -> None:
    opts = EvalOptions(values=["power"], methods=["ica"], n=1, max_tokens=4,
                       negative_prompt=True, show_progress=False)
    res = run_eval(EvalContext(session, tmp_path, lambda: CountingJudge()), opts)
    assert list(res.values["power"]) == ["ica+neg"]
    assert (tmp_path / "results-neg.json").is_file()
    assert not (tmp_path / "results.json").exists()
    rec = next(iter(JsonlStore(tmp_path / "generations.jsonl").records.values()))
    assert rec["negative_prompt"] is True


def test_an_out_dir_made_with_other_settings_is_refused(session: SteeringSession,
                                                        tmp_path: Path) -> None:
    opts = EvalOptions(values=["power"], methods=["none"], n=1, max_tokens=3,
                       show_progress=False, general=False)
    run_eval(EvalContext(session, tmp_path, lambda: CountingJudge()), opts)
    settings = json.loads((tmp_path / "run.json").read_text())
    assert settings["max_tokens"] == 3 and settings["p0"] is None
    assert settings["pack_sha256"] == session.pack.digest()
    assert settings["repetition_penalty"] == 1.2  # eval decodes as the chat does
    for change in ({"max_tokens": 5}, {"p0": 0.99}, {"strength": 0.5},
                   {"repetition_penalty": 1.0}):
        other = EvalOptions(**{**opts.__dict__, **change})
        with pytest.raises(ConvaError, match="other settings"):
            run_eval(EvalContext(session, tmp_path, lambda: CountingJudge()), other)
    # the same settings resume quietly
    run_eval(EvalContext(session, tmp_path, lambda: CountingJudge()), opts)
    # a run made before `strength` and the penalty were saved was made without the penalty:
    # it resumes with --repetition-penalty 1, and the new default is refused in one line
    del settings["strength"], settings["repetition_penalty"]
    (tmp_path / "run.json").write_text(json.dumps(settings))
    with pytest.raises(ConvaError, match=r"repetition_penalty=1.0 \(now 1.2\)"):
        run_eval(EvalContext(session, tmp_path, lambda: CountingJudge()), opts)
    old = EvalOptions(**{**opts.__dict__, "repetition_penalty": 1.0})
    check_run_settings(EvalContext(session, tmp_path, lambda: CountingJudge()), old)


# ----- SteeringSession.next_token_logits ---------------------------------------------------------

PROMPT = "Should I keep my promise to help a friend, or go to a party instead?"


def test_unsteered_next_token_logits_equal_the_plain_model(session: SteeringSession) -> None:
    lm = session.lm
    logits, gate = session.next_token_logits(PROMPT, SteerConfig(method="none"))
    tokens = mx.array(lm.tokenizer.encode(lm.chat_prompt([{"role": "user",
                                                            "content": PROMPT}])))
    plain = lm.model(tokens[None])[0, -1]
    np.testing.assert_allclose(np.array(logits), np.array(plain), atol=1e-4)
    assert gate.used is False


@pytest.mark.parametrize("cfg", [
    SteerConfig([Target("benevolence", 0.99)], method="conva", gate=False),
    SteerConfig([Target("power")], method="caa", caa_coef=4.0),
    SteerConfig([Target("power")], method="ica"),
], ids=["conva", "caa", "ica"])
def test_steered_next_token_logits_predict_the_first_generated_token(
        session: SteeringSession, cfg: SteerConfig) -> None:
    logits, _gate = session.next_token_logits(PROMPT, cfg)
    first = session.generate(PROMPT, cfg, GenOptions(max_tokens=1)).tokens[0]
    assert int(mx.argmax(logits).item()) == first


def test_conva_next_token_logits_change_only_when_the_gate_opens(
        session: SteeringSession) -> None:
    cfg = SteerConfig([Target("benevolence", 0.99)], method="conva", gate=True)
    plain, _ = session.next_token_logits(PROMPT, SteerConfig(method="none"))
    steered, gate = session.next_token_logits(PROMPT, cfg)
    assert gate.used and gate.score is not None
    if gate.open:
        assert not np.allclose(np.array(steered), np.array(plain))
    else:
        np.testing.assert_array_equal(np.array(steered), np.array(plain))


def test_mcq_answer_reads_the_letter_logits(default_lm: LoadedModel) -> None:
    ids = mcq_letter_ids(default_lm.tokenizer)
    assert set(ids) == set("ABCD") and all(ids.values())
    logits = mx.zeros((default_lm.model.args.vocab_size,))
    logits[ids["C"][-1]] = 5.0
    assert mcq_answer(logits, ids) == "C"
