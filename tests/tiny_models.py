"""Tiny random-weight Llama / Qwen2 / Qwen3 models (and GGUF exports of them) for tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.utils import _get_classes

from conva_mlx.models.gguf_reader import read_gguf_header

ARCHS = ("llama", "qwen2", "qwen3")


def tiny_config(arch: str, vocab_size: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model_type": arch, "hidden_size": 64, "num_hidden_layers": 4,
        "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6, "vocab_size": vocab_size, "rope_theta": 10000.0,
        "max_position_embeddings": 512, "tie_word_embeddings": arch != "qwen3",
        "head_dim": 16,
    }
    return config


def make_tiny_model(arch: str, out_dir: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Write an mlx-lm model directory with random weights and the given tokenizer."""
    vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    config = tiny_config(arch, vocab)
    model_cls, args_cls = _get_classes(config)
    mx.random.seed(seed)
    model = model_cls(args_cls.from_dict(config))
    # Bigger-than-default init so the random model's states are not all near zero.
    params = dict(tree_flatten(model.parameters()))
    weights = {k: (v * 2.0 if "norm" not in k else v + 0.1 * mx.random.normal(v.shape))
               for k, v in params.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights)
    (out_dir / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, out_dir / name)
    return out_dir


def _permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (HF half-split RoPE -> interleaved)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def export_tiny_gguf(model_dir: Path, out_file: Path, tokenizer_gguf: Path,
                     quant: str = "F32") -> Path:
    """Write a tiny mlx-lm model as a GGUF file the way llama.cpp's converter would."""
    import gguf

    config = json.loads((model_dir / "config.json").read_text())
    arch = config["model_type"]
    weights = {k: np.array(v.astype(mx.float32))
               for k, v in mx.load(str(model_dir / "model.safetensors")).items()}
    writer = gguf.GGUFWriter(str(out_file), arch)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_key_length(config["head_dim"])
    writer.add_value_length(config["head_dim"])
    src = read_gguf_header(tokenizer_gguf).metadata
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(src["tokenizer.ggml.pre"])
    writer.add_token_list(src["tokenizer.ggml.tokens"])
    writer.add_token_merges(src["tokenizer.ggml.merges"])
    writer.add_token_types(src["tokenizer.ggml.token_type"])
    writer.add_eos_token_id(src["tokenizer.ggml.eos_token_id"])
    writer.add_chat_template(src["tokenizer.chat_template"])
    qtype = getattr(gguf.GGMLQuantizationType, quant)
    for name, w in weights.items():
        if name.startswith("model.layers."):
            parts = name.split(".")
            module = ".".join(parts[3:-1])
            gname = f"blk.{parts[2]}.{_GGUF_NAMES[module]}.{parts[-1]}"
        else:
            gname = {"model.embed_tokens.weight": "token_embd.weight",
                     "model.norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"}[name]
        if arch == "llama" and (".attn_q." in gname or ".attn_k." in gname):
            heads = config["num_attention_heads" if ".attn_q." in gname
                           else "num_key_value_heads"]
            w = _permute(w, heads)
        if w.ndim == 2 and quant != "F32":
            data = gguf.quants.quantize(w, qtype)
            writer.add_tensor(gname, data, raw_shape=data.shape, raw_dtype=qtype)
        else:
            writer.add_tensor(gname, w.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file
