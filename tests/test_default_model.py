"""The default model is prepared from scratch, loads, and answers a simple question."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlx_lm import generate

from conva_mlx.models.default_model import ensure_default_model
from conva_mlx.models.loading import LoadedModel


def test_default_model_is_prepared_from_scratch_keeping_quantization(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVA_MLX_CACHE", str(tmp_path))
    out = ensure_default_model()
    assert out.is_relative_to(tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    assert config["quantization"]["model.embed_tokens"]["bits"] == 8
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tok_config["chat_template"]
    assert ensure_default_model() == out  # second call reuses the directory


def test_default_model_answers_capital_of_france(default_lm: LoadedModel) -> None:
    prompt = default_lm.chat_prompt([{"role": "user", "content": "What is the capital of France?"}])
    reply = generate(default_lm.model, default_lm.tokenizer, prompt, max_tokens=24)
    assert "Paris" in reply


def test_tokenizer_round_trips_text(default_lm: LoadedModel) -> None:
    text = "Hello, world! 12345 don't  stop\n<|im_start|>user"
    ids = default_lm.tokenizer.encode(text)
    assert default_lm.tokenizer.decode(ids) == text
    assert default_lm.tokenizer.encode("<|im_end|>") == [2]
