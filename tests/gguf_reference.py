"""An independent numpy Llama forward pass computed directly from dequantized GGUF tensors.

It uses the tensors exactly as llama.cpp stores them (q/k rows permuted) with llama.cpp's
interleaved ("normal") RoPE, so it does not share the importer's un-permute logic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conva_mlx.gguf_reader import read_gguf_header


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


def llama_reference_logits(path: Path, token_ids: list[int]) -> np.ndarray:
    import gguf
    from gguf.quants import dequantize

    header = read_gguf_header(path)
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
        q = (h @ t[p + "attn_q.weight"].T).reshape(steps, nh, hd).transpose(1, 0, 2)
        k = (h @ t[p + "attn_k.weight"].T).reshape(steps, nkv, hd).transpose(1, 0, 2)
        v = (h @ t[p + "attn_v.weight"].T).reshape(steps, nkv, hd).transpose(1, 0, 2)
        q, k = _rope_interleaved(q, base), _rope_interleaved(k, base)
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
