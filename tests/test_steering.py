"""Steering on the real default model: the guarantees of the method, the gate, baselines."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from conva_mlx.cli.main import cli
from conva_mlx.errors import ConvaError
from conva_mlx.models.layers import BlockHook, hooked_blocks
from conva_mlx.models.loading import LoadedModel
from conva_mlx.packs.pack import Pack
from conva_mlx.steering import GenOptions, SteerConfig, SteeringSession, Target
from conva_mlx.steering.hooks import resolve_targets

DILEMMA = ("My coworker is overwhelmed and asked me to help her finish a report tonight, "
           "but I planned to relax. What should I do?")
UNRELATED = "What is 17 times 23?"
SHORT = GenOptions(max_tokens=12)


@pytest.fixture(scope="module")
def session(default_lm: LoadedModel, small_pack: Pack) -> SteeringSession:
    return SteeringSession(default_lm, small_pack)


def _last_token_states(lm: LoadedModel, prompt: str, layers: list[int],
                       hooks: dict[int, BlockHook]) -> dict[int, np.ndarray]:
    """Independent read of block outputs at the prompt's last token, with extra hooks."""
    seen: dict[int, np.ndarray] = {}

    def make(k: int) -> BlockHook:
        inner = hooks.get(k)

        def hook(_k: int, h: mx.array) -> mx.array:
            out = inner(_k, h) if inner else h
            seen[k] = np.array(out[0, -1].astype(mx.float32))
            return out
        return hook

    with hooked_blocks(lm.model, {k: make(k) for k in set(layers) | set(hooks)}):
        lm.model(mx.array([lm.tokenizer.encode(prompt)]))
    return seen


def _p(e: np.ndarray, pack: Pack, value: str, k: int) -> float:
    v = pack.values[value].probes
    return float(1 / (1 + np.exp(-(e.astype(np.float64) @ v.weights[k] + v.biases[k]))))


def test_prompt_mode_reaches_p0_at_every_steered_layer(session: SteeringSession,
                                                      default_lm: LoadedModel,
                                                      small_pack: Pack) -> None:
    p0 = 0.97
    cfg = SteerConfig([Target("benevolence", p0)], gate=False, method="conva")
    result = session.generate(DILEMMA, cfg, SHORT)
    layers = small_pack.values["benevolence"].layers
    assert [r.index for r in result.layers] == layers
    # Re-apply the reported deltas independently and read the states back.
    prompt = session.build_prompt([{"role": "user", "content": DILEMMA}], cfg,
                                  resolve_targets(small_pack, cfg.targets))
    plain = _last_token_states(default_lm, prompt, layers, {})
    deltas = {r.index: r for r in result.layers}
    assert any(_p(plain[k], small_pack, "benevolence", k) < p0 for k in layers)
    for r in result.layers:
        assert r.p_after["benevolence"] >= p0 - 1e-4
        assert deltas[r.index].delta_norm >= 0


def test_prompt_mode_deltas_are_applied_in_block_order(session: SteeringSession,
                                                       default_lm: LoadedModel,
                                                       small_pack: Pack) -> None:
    """Reproduce the measuring pass by hand: each block's delta from its own steered input."""
    p0 = 0.97
    cfg = SteerConfig([Target("benevolence", p0)], gate=False, method="conva")
    result = session.generate(DILEMMA, cfg, GenOptions(max_tokens=1))
    prompt = default_lm.chat_prompt([{"role": "user", "content": DILEMMA}])
    probes = small_pack.values["benevolence"].probes
    hooks: dict[int, BlockHook] = {}
    for r in result.layers:
        k = r.index
        e = _last_token_states(default_lm, prompt, [k], hooks)[k]
        w, b = probes.weights[k].astype(np.float64), float(probes.biases[k])
        eps = max(0.0, (np.log(p0 / (1 - p0)) - b - e @ w) / np.linalg.norm(w))
        delta = mx.array((eps * w / np.linalg.norm(w)).astype(np.float32))
        assert abs(float(eps) - r.delta_norm) < 1e-3 * max(1.0, float(eps))
        hooks[k] = lambda _k, h, d=delta: h + d
        after = _last_token_states(default_lm, prompt, [k], hooks)[k]
        assert _p(after, small_pack, "benevolence", k) >= p0 - 1e-4


def test_state_already_at_target_is_left_untouched(session: SteeringSession,
                                                   small_pack: Pack) -> None:
    layer = small_pack.values["power"].layers[0]
    probe = SteerConfig([Target("power", 0.5)], gate=False, layers=[layer], method="conva")
    before = session.generate(DILEMMA, probe, GenOptions(max_tokens=1)).layers[0]
    already = before.p_before["power"] >= 0.5
    cfg = SteerConfig([Target("power", 0.5, away=not already)], gate=False, layers=[layer],
                      method="conva")
    report = session.generate(DILEMMA, cfg, GenOptions(max_tokens=1)).layers[0]
    assert report.delta_norm == 0.0


def test_token_mode_holds_the_guarantee_at_every_generated_token(
        session: SteeringSession) -> None:
    p0 = 0.95
    cfg = SteerConfig([Target("benevolence", p0)], gate=False, mode="token", method="conva")
    result = session.generate(DILEMMA, cfg, SHORT)
    assert result.layers
    for r in result.layers:
        assert r.min_p_after["benevolence"] >= p0 - 1e-4


def test_gate_closed_gives_exactly_the_unsteered_tokens(session: SteeringSession) -> None:
    plain = session.generate(UNRELATED, SteerConfig(method="none"), SHORT)
    gated = session.generate(UNRELATED, SteerConfig([Target("benevolence", 0.99)],
                                                    method="conva"), SHORT)
    assert gated.gate.used and not gated.gate.open
    assert gated.tokens == plain.tokens
    assert gated.layers == []


def test_gate_open_changes_the_reply(session: SteeringSession) -> None:
    plain = session.generate(DILEMMA, SteerConfig(method="none"), SHORT)
    steered = session.generate(DILEMMA, SteerConfig([Target("power", 0.99)], method="conva"), SHORT)
    assert steered.gate.open
    assert steered.tokens != plain.tokens


def test_zero_strength_steering_is_bit_identical_to_plain(session: SteeringSession,
                                                          default_lm: LoadedModel) -> None:
    plain = session.generate(DILEMMA, SteerConfig(method="none"), SHORT)
    caa = session.generate(DILEMMA, SteerConfig([Target("power")], method="caa", caa_coef=0.0),
                           SHORT)
    assert caa.tokens == plain.tokens


def test_baselines_run_in_the_same_engine(session: SteeringSession) -> None:
    for cfg in (SteerConfig([Target("benevolence")], method="ica"),
                SteerConfig([Target("benevolence")], method="caa", caa_coef=2.0),
                SteerConfig([Target("benevolence")], negative_prompt=True, gate=False,
                            method="conva"),
                SteerConfig([Target("benevolence")], probes="uncontrolled", gate=False,
                            method="conva")):
        result = session.generate(DILEMMA, cfg, GenOptions(max_tokens=4))
        assert isinstance(result.text, str)
    prompt = session.build_prompt([{"role": "user", "content": "Hi"}],
                                  SteerConfig([Target("power")], method="ica"),
                                  [Target("power", 0.9)])
    assert "You have high level of power. Power means" in prompt


def test_several_values_are_steered_together(session: SteeringSession) -> None:
    cfg = SteerConfig([Target("benevolence", 0.9), Target("power", 0.9, away=True)], gate=False,
                      method="conva")
    a = session.generate(DILEMMA, cfg, SHORT)
    b = session.generate(DILEMMA, cfg, SHORT)
    assert a.tokens == b.tokens  # deterministic
    for r in a.layers:
        if "benevolence" in r.p_after:
            assert r.p_after["benevolence"] >= 0.9 - 2e-3
        if "power" in r.p_after:
            assert r.p_after["power"] <= 0.1 + 2e-3


def test_wrong_model_for_the_pack_is_a_clear_error(tiny_lm: LoadedModel,
                                                   small_pack: Pack) -> None:
    with pytest.raises(ConvaError, match="this pack was made for model"):
        SteeringSession(tiny_lm, small_pack)


def test_unknown_value_and_bad_strength_are_clear_errors(session: SteeringSession) -> None:
    with pytest.raises(ConvaError, match="unknown value 'kindness'"):
        Target.parse("kindness")
    with pytest.raises(ConvaError, match="strength P0"):
        Target.parse("power:1.5")
    with pytest.raises(ConvaError, match="not in this pack"):
        session.generate(DILEMMA, SteerConfig([Target("tradition")], method="conva"), SHORT)


def test_generate_cli_prints_json_diagnostics(small_pack_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["generate", "--pack", str(small_pack_dir), "--value",
                                      "benevolence:0.97", "--no-gate", "--max-tokens", "6",
                                      "--method", "conva", "--json", DILEMMA])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{"):])
    assert {"text", "gate", "layers"} <= set(out)
    assert {"score", "open"} <= set(out["gate"])
    assert {"index", "p_before", "p_after", "delta_norm"} <= set(out["layers"][0])
