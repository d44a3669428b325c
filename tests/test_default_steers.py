"""With default settings, choosing a value changes the reply to a value dilemma: the CLI and
the server on the default model, its full pack and the calibration conva-mlx ships for it."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from conva_mlx.cli.main import cli
from conva_mlx.models.loading import LoadedModel
from conva_mlx.packs.pack import load_pack
from conva_mlx.steering import GenOptions, SteerConfig, SteeringSession
from conva_mlx.steering.config import DEFAULT_METHOD
from tests.local_servers import free_port, running_server

DILEMMA = ("Should Maya spend her savings on a trip around the world, or keep them to help "
           "her younger brother pay for his studies?")
TOKENS = 24


def test_the_default_pack_finds_the_shipped_calibration(full_pack_dir: Path) -> None:
    pack = load_pack(full_pack_dir)
    assert DEFAULT_METHOD == "calibrated"
    assert pack.calibration is not None, "no shipped calibration matched the default pack"
    assert pack.calibration_source.startswith("shipped")
    assert pack.calibration.instruct  # measured with the instruction: instruction + push
    for name, cal in pack.calibration.values.items():
        assert cal.curve and cal.has_instructed, name
        assert cal.effect_at(1.0) >= cal.unsteered_favoured - 0.05, name


def test_the_cli_default_changes_the_reply_when_a_value_is_chosen(full_pack_dir: Path) -> None:
    runner = CliRunner()
    base = ["generate", "--pack", str(full_pack_dir), "--max-tokens", str(TOKENS), "--json"]
    plain = runner.invoke(cli, [*base, "--method", "none", DILEMMA])
    steered = runner.invoke(cli, [*base, "--value", "benevolence", DILEMMA])
    assert plain.exit_code == 0, plain.output
    assert steered.exit_code == 0, steered.output
    a = json.loads(plain.output[plain.output.index("{"):])
    b = json.loads(steered.output[steered.output.index("{"):])
    assert b["method"] == "calibrated" and b["gate"]["open"]
    assert b["instruction"].startswith("You have high level of benevolence.")
    assert a["text"] != b["text"]
    (effect,) = b["expected"]
    assert effect["value"] == "benevolence" and effect["strength"] == pytest.approx(1.0)
    # what the measured curve says, even where the push does not raise the share
    assert 0 <= effect["unsteered"] <= 1 and 0 <= effect["favoured"] <= effect["max_favoured"]


def test_an_effect_asks_the_curve_for_its_strength(full_pack_dir: Path,
                                                   default_lm: LoadedModel) -> None:
    pack = load_pack(full_pack_dir)
    session = SteeringSession(default_lm, pack)
    cal = pack.calibration.values["benevolence"]  # type: ignore[union-attr]
    instructed = pack.calibration.instruct  # type: ignore[union-attr]  # the default's curve
    want = (cal.effect_at(0.0, instructed) + cal.max_effect(instructed)) / 2
    cfg = SteerConfig([f"benevolence:{max(0.5, want):.3f}"])
    result = session.generate(DILEMMA, cfg, GenOptions(max_tokens=4))
    (effect,) = result.expected
    assert effect.favoured == pytest.approx(max(0.5, want), abs=0.01) or effect.strength == 0
    assert "held-out dilemmas" in result.summary()


@pytest.fixture(scope="module")
def full_server(full_pack_dir: Path) -> Iterator[str]:
    port = free_port()
    os.environ["CONVA_TEST_SERVE_KEY"] = "k"
    cmd = [str(Path(sys.executable).parent / "conva-mlx"), "serve", "--pack",
           str(full_pack_dir), "--port", str(port), "--api-key-env", "CONVA_TEST_SERVE_KEY"]
    with running_server(cmd, f"http://127.0.0.1:{port}/health", "conva-mlx serve"):
        yield f"http://127.0.0.1:{port}/v1"


def test_the_server_default_changes_the_reply_and_says_what_to_expect(
        full_server: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=full_server, api_key="k")

    def ask(steering: dict[str, object]) -> tuple[str, dict[str, object]]:
        r = client.chat.completions.create(
            model="conva", messages=[{"role": "user", "content": DILEMMA}],
            max_tokens=TOKENS, temperature=0, extra_body={"steering": steering})
        return r.choices[0].message.content or "", r.model_extra["conva"]

    plain, _ = ask({"method": "none"})
    steered, conva = ask({"values": {"benevolence": None}})
    # the default model's default: ICA's instruction + the calibrated push (gate open)
    assert conva["method"] == "calibrated" and steered != plain
    assert conva["instruction"].startswith("You have high level of benevolence.")
    (effect,) = conva["expected"]
    assert effect["value"] == "benevolence" and effect["instructed"] is True
    alone, conva = ask({"values": {"benevolence": None}, "instruct": False})
    assert conva["instruction"] is None and conva["expected"][0]["instructed"] is False
    assert alone not in (plain, steered)
    import urllib.request
    req = urllib.request.Request(full_server + "/steering",
                                 headers={"Authorization": "Bearer k"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        info = json.loads(resp.read())
    assert info["calibration"].startswith("shipped")
    assert "favoured on" in info["values"]["benevolence"]["expected_text"]
