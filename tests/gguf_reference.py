"""An independent numpy Llama / Qwen2 forward pass computed directly from dequantized
GGUF tensors (the `gguf` package's dequantizer, float64 compute).

Llama: the tensors exactly as llama.cpp stores them (q/k rows permuted) with llama.cpp's
interleaved ("normal") RoPE, so it does not share the importer's un-permute logic.
Qwen2: q/k/v biases and llama.cpp's NEOX RoPE (rotate the two halves of each head).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conva_mlx.models.gguf_reader import read_gguf_header


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope_interleaved(x: np.ndarray, base: float) -> np.ndarray:
    """x: (heads, T, hd); rotates adjacent pairs (x[2i], x[2i+1])."""
    _, t, hd = x.shape
    inv = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(t)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def _rope_neox(x: np.ndarray, base: float) -> np.ndarray:
    """x: (heads, T, hd); rotates (x[i], x[i + hd/2])."""
    _, t, hd = x.shape
    inv = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(t)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    x0, x1 = x[..., : hd // 2], x[..., hd // 2:]
    return np.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)


def _project(h: np.ndarray, t: dict[str, np.ndarray], name: str, heads: int,
             hd: int) -> np.ndarray:
    """h @ W.T (+ bias, Qwen2), as (heads, T, head_dim)."""
    y = h @ t[f"{name}.weight"].T + t.get(f"{name}.bias", 0.0)
    return y.reshape(h.shape[0], heads, hd).transpose(1, 0, 2)


def llama_reference_logits(path: Path, token_ids: list[int]) -> np.ndarray:
    return reference_logits(path, token_ids)


def reference_logits(path: Path, token_ids: list[int]) -> np.ndarray:
    import gguf
    from gguf.quants import dequantize

    header = read_gguf_header(path)
    neox = header.architecture in ("qwen2", "qwen3")
    rope = _rope_neox if neox else _rope_interleaved
    reader = gguf.GGUFReader(str(path))
    t = {}
    for tensor in reader.tensors:
        arr = dequantize(tensor.data, tensor.tensor_type).astype(np.float64)
        t[tensor.name] = arr.reshape(tuple(reversed([int(d) for d in tensor.shape])))
    n_layers = int(header.arch_key("block_count"))
    nh = int(header.arch_key("attention.head_count"))
    nkv = int(header.arch_key("attention.head_count_kv"))
    eps = float(header.arch_key("attention.layer_norm_rms_epsilon"))
    base = float(header.arch_key("rope.freq_base"))
    x = t["token_embd.weight"][token_ids]
    steps = len(token_ids)
    hd = x.shape[1] // nh
    mask = np.triu(np.full((steps, steps), -np.inf), 1)
    for layer in range(n_layers):
        p = f"blk.{layer}."
        h = _rms_norm(x, t[p + "attn_norm.weight"], eps)
        q, k, v = (_project(h, t, p + name, heads, hd)
                   for name, heads in (("attn_q", nh), ("attn_k", nkv), ("attn_v", nkv)))
        q, k = rope(q, base), rope(k, base)
        k, v = np.repeat(k, nh // nkv, axis=0), np.repeat(v, nh // nkv, axis=0)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        o = (scores @ v).transpose(1, 0, 2).reshape(steps, nh * hd)
        x = x + o @ t[p + "attn_output.weight"].T
        h = _rms_norm(x, t[p + "ffn_norm.weight"], eps)
        g = h @ t[p + "ffn_gate.weight"].T
        u = h @ t[p + "ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ t[p + "ffn_down.weight"].T
    x = _rms_norm(x, t["output_norm.weight"], eps)
    head = t.get("output.weight", t["token_embd.weight"])
    return np.asarray(x @ head.T)
