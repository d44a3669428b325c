"""Rebuild a Hugging Face `tokenizer.json` from GGUF tokenizer metadata.

Only byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`: Llama 3, SmolLM,
Qwen2/Qwen3) are supported; SentencePiece vocabularies raise a clear error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conva_mlx.errors import ConvaError
from conva_mlx.fsutil import atomic_write_text
from conva_mlx.models.gguf_reader import GGUFHeader

# Pre-tokenizer split patterns, as used by the original Hugging Face tokenizers.
_QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4


def _byte_level(use_regex: bool) -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
            "use_regex": use_regex}


def _split(pattern: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated",
            "invert": False}


def pre_tokenizer_for(pre: str) -> dict[str, Any]:
    """The HF pre-tokenizer config for a GGUF `tokenizer.ggml.pre` name."""
    if pre == "smollm":
        return {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, _byte_level(True)]}
    if pre in ("qwen2", "qwen35"):
        return {"type": "Sequence", "pretokenizers": [_split(_QWEN2_PATTERN), _byte_level(False)]}
    if pre in ("llama-bpe", "llama3", "smaug-bpe"):
        return {"type": "Sequence", "pretokenizers": [_split(_LLAMA3_PATTERN), _byte_level(False)]}
    if pre in ("gpt-2", "gpt2", "default"):
        return _byte_level(True)
    raise ConvaError(
        f"GGUF tokenizer pre-tokenizer '{pre}' is not supported "
        "(supported: smollm, qwen2, llama-bpe, gpt-2)"
    )


def tokenizer_files_from_gguf(header: GGUFHeader) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (tokenizer.json, tokenizer_config.json) contents for a GGUF file."""
    md = header.metadata
    kind = md.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ConvaError(
            f"{header.path}: tokenizer type '{kind}' is not supported "
            "(only byte-level BPE, tokenizer.ggml.model = gpt2)"
        )
    tokens: list[str] = md["tokenizer.ggml.tokens"]
    merges: list[str] = md.get("tokenizer.ggml.merges", [])
    types: list[int] = md.get("tokenizer.ggml.token_type", [1] * len(tokens))
    pre = str(md.get("tokenizer.ggml.pre", "default"))

    added = []
    for i, (tok, ttype) in enumerate(zip(tokens, types)):
        if ttype in (_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED):
            added.append({"id": i, "content": tok, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": ttype == _TOKEN_TYPE_USER_DEFINED,
                          "special": ttype == _TOKEN_TYPE_CONTROL})

    def tok_at(key: str) -> str | None:
        idx = md.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(idx)] if idx is not None and int(idx) < len(tokens) else None

    bos, eos = tok_at("bos"), tok_at("eos")
    add_bos = bool(md.get("tokenizer.ggml.add_bos_token", False))
    post: dict[str, Any] | None = None
    if add_bos and bos is not None:
        bos_id = int(md["tokenizer.ggml.bos_token_id"])
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    tokenizer_json: dict[str, Any] = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer_for(pre),
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ", 1) for m in merges]},
    }
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "add_bos_token": add_bos,
        "model_max_length": int(header.arch_key("context_length", 4096)),
    }
    for key, value in (("bos_token", bos), ("eos_token", eos), ("pad_token", tok_at("padding")),
                       ("unk_token", tok_at("unknown"))):
        if value is not None:
            config[key] = value
    template = md.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    return tokenizer_json, config


def write_tokenizer_files(header: GGUFHeader, out_dir: Path) -> None:
    tokenizer_json, config = tokenizer_files_from_gguf(header)
    atomic_write_text(out_dir / "tokenizer.json", json.dumps(tokenizer_json, ensure_ascii=False))
    atomic_write_text(out_dir / "tokenizer_config.json", json.dumps(config, indent=2))
