"""The public API: the README's Python API blocks run as written, and `steered` inside
mlx-lm's own decode loop gives the session's tokens."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import conva_mlx as cm
from conva_mlx.models.layers import HookedBlock, find_blocks

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(section: str) -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    body = readme.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


@pytest.fixture(scope="module")
def readme_ns(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run every Python block of the README's "Python API" section, in order."""
    blocks = _python_blocks("Python API")
    assert len(blocks) == 3
    ns: dict[str, Any] = {}
    cwd = Path.cwd()
    os.chdir(tmp_path_factory.mktemp("api"))
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"README.md (Python API block {i + 1})", "exec"), ns)
        ns["cwd"] = Path.cwd()
    finally:
        os.chdir(cwd)
    return ns


def test_the_readme_blocks_extract_save_generate_and_stream(readme_ns: dict[str, Any]) -> None:
    pack, result = readme_ns["pack"], readme_ns["result"]
    assert list(pack.values) == ["benevolence"] and pack.gate is not None
    assert pack.values["benevolence"].uncontrolled is None  # the library skips the ablation
    assert cm.open_pack(readme_ns["cwd"] / "packs" / "benevolence").digest() == pack.digest()
    assert result.gate.open and result.layers and result.text
    piece = readme_ns["piece"]
    assert piece.result is not None and piece.result.text
    assert readme_ns["plain"].method == "none" and not readme_ns["plain"].layers


def test_steered_inside_mlx_lm_generate_equals_the_session(readme_ns: dict[str, Any]) -> None:
    """Token mode through mlx_lm.generate == the session's token mode, token for token; the
    gated prompt-mode block == the session's default (gated prompt mode)."""
    from mlx_lm import stream_generate

    lm, pack, session = readme_ns["lm"], readme_ns["pack"], readme_ns["session"]
    prompt = readme_ns["prompt"]
    messages = [{"role": "user", "content": "Should I help my colleague or "
                                            "finish my own report first?"}]
    opts = cm.GenOptions(max_tokens=30)
    token_mode = session.generate(messages, cm.SteerConfig("benevolence:0.95", mode="token",
                                                           gate=False, method="conva"), opts)
    with cm.steered(lm, pack, "benevolence:0.95", method="conva", mode="token") as handle:
        tokens = [int(r.token) for r in stream_generate(lm.model, lm.tokenizer, prompt,
                                                        max_tokens=30)
                  if r.finish_reason != "stop"]
    assert tokens == token_mode.tokens
    assert readme_ns["steered_text"] == token_mode.text
    assert handle.layers and all(r.min_p_after for r in handle.layers)
    gated = session.generate(messages, cm.SteerConfig("benevolence:0.95", method="conva"), opts)
    assert readme_ns["gated_text"] == gated.text
    assert readme_ns["handle"].gate.score == pytest.approx(gated.gate.score, abs=1e-6)
    # the model is restored after every block
    assert not any(isinstance(b, HookedBlock) for b in find_blocks(lm.model))
    plain = session.generate(messages, cm.SteerConfig(method="none"), opts)
    assert plain.tokens != token_mode.tokens


def test_steered_refuses_what_it_cannot_do(readme_ns: dict[str, Any]) -> None:
    lm, pack = readme_ns["lm"], readme_ns["pack"]
    with pytest.raises(cm.ConvaError, match="prompt="), \
            cm.steered(lm, pack, "benevolence", method="conva", mode="prompt"):
        pass
    with pytest.raises(cm.ConvaError, match="unknown value"), cm.steered(lm, pack, "kindness"):
        pass
    with pytest.raises(cm.ConvaError, match="ica is a prompt prefix"), \
            cm.steered(lm, pack, "benevolence", method="ica"):  # type: ignore[arg-type]
        pass
    assert not any(isinstance(b, HookedBlock) for b in find_blocks(lm.model))


def test_steer_config_parses_strings_and_validates_names() -> None:
    cfg = cm.SteerConfig(["benevolence:0.97", cm.Target("power", 0.9, away=True)], method="conva")
    assert cfg.targets == [cm.Target("benevolence", 0.97), cm.Target("power", 0.9, True)]
    assert cm.SteerConfig("achievement", method="conva").targets == [cm.Target("achievement")]
    for bad, message in (("kindness", "unknown value"), ("benevolence:1.2", "P0"),
                         ("benevolence:high", "bad strength")):
        with pytest.raises(cm.ConvaError, match=message):
            cm.SteerConfig(bad, method="conva")
    with pytest.raises(cm.ConvaError, match="unknown value"):
        cm.Target("kindness")
    with pytest.raises(cm.ConvaError, match="unknown method"):
        cm.SteerConfig("benevolence", method="steer")  # type: ignore[arg-type]


def test_import_is_lazy_and_the_names_are_all_there() -> None:
    code = ("import sys, conva_mlx as cm; heavy = [m for m in ('mlx', 'mlx_lm', 'numpy', "
            "'sklearn', 'conva_mlx.steering') if m in sys.modules]; print(heavy); "
            "[getattr(cm, n) for n in cm.__all__]")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
    with pytest.raises(AttributeError):
        cm.no_such_name  # noqa: B018
