"""Convert a Llama / Qwen2 / Qwen3 GGUF file into an mlx-lm model directory.

Quantized tensors stay quantized as MLX affine weights (group size 32, bits recorded per
module in config.json): Q4_0, Q4_1 and Q8_0 bit for bit when the file has no other quant
type; otherwise (K-quants, Q5_0, Q5_1) every quantized tensor is dequantized by the `gguf`
package and re-quantized with at least the source's bits (REQUANT_BITS), in row chunks.
F32/F16/BF16 tensors are stored as they are (BF16 is read exactly, as float32 -> bfloat16).
Layer k of the GGUF (`blk.k`) becomes `model.layers.k` (output of decoder block k).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from conva_mlx.errors import ConvaError
from conva_mlx.fsutil import OutputKind, check_output_dir, staged_output_dir
from conva_mlx.models.gguf_reader import GGUFHeader, check_supported_types, read_gguf_header
from conva_mlx.models.gguf_tokenizer import write_tokenizer_files
from conva_mlx.progress import progress_bar

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")
# What an imported model directory consists of; config.json marks it and is written last.
MODEL_OUTPUT = OutputKind("model directory", "config.json",
                          ("config.json", "model.safetensors", "model-*.safetensors",
                           "model.safetensors.index.json", "tokenizer.json",
                           "tokenizer_config.json"))
GROUP_SIZE = 32
FLOAT_TYPES = {"F32", "F16", "BF16"}
MLX_NATIVE_QUANT = {"Q8_0", "Q4_0", "Q4_1"}
# Bits of the MLX affine re-quantization per GGUF type: at least the source's precision.
REQUANT_BITS = {"Q2_K": 4, "Q3_K": 4, "Q4_0": 4, "Q4_1": 4, "Q4_K": 4, "Q5_0": 5, "Q5_1": 5,
                "Q5_K": 5, "Q6_K": 6, "Q8_0": 8}

_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
              "output": "lm_head"}


def hf_name(gguf_name: str) -> str:
    """Map a GGUF tensor name (`blk.3.attn_q.weight`) to the mlx-lm parameter name."""
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        module, suffix = parts[2], ".".join(parts[3:])
        if module not in _BLOCK_NAMES:
            raise ConvaError(f"unexpected GGUF tensor {gguf_name}")
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[module]}.{suffix}"
    if parts[0] not in _TOP_NAMES:
        raise ConvaError(f"unexpected GGUF tensor {gguf_name}")
    return f"{_TOP_NAMES[parts[0]]}.{'.'.join(parts[1:])}"


def unpermute_rows(w: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's q/k row permutation (interleaved RoPE -> HF half-split RoPE).

    Rows are quantized independently, so this applies equally to quantized weights,
    their scales and biases, and to float weights.
    """
    rows = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def _read_float_tensor(header: GGUFHeader, name: str) -> mx.array:
    """Read an F32/F16/BF16 tensor exactly with numpy (mx.load turns BF16 into F16)."""
    info = header.tensors[name]
    count = int(np.prod(info.shape)) if info.shape else 1
    if info.type_name == "F32":
        arr = np.fromfile(header.path, dtype="<f4", count=count, offset=info.offset)
        return mx.array(arr.reshape(info.shape))
    if info.type_name == "F16":
        arr16 = np.fromfile(header.path, dtype="<f2", count=count, offset=info.offset)
        return mx.array(arr16.reshape(info.shape))
    raw = np.fromfile(header.path, dtype="<u2", count=count, offset=info.offset)
    as_f32 = (raw.astype(np.uint32) << 16).view(np.float32).reshape(info.shape)
    return mx.array(as_f32).astype(mx.bfloat16)


def _model_config(header: GGUFHeader, tied: bool) -> dict[str, Any]:
    arch = header.architecture
    n_heads = int(header.arch_key("attention.head_count"))
    hidden = int(header.arch_key("embedding_length"))
    vocab = header.arch_key("vocab_size") or len(header.metadata.get("tokenizer.ggml.tokens", []))
    config: dict[str, Any] = {
        "model_type": arch,
        "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                           "qwen3": "Qwen3ForCausalLM"}[arch]],
        "hidden_size": hidden,
        "num_hidden_layers": int(header.arch_key("block_count")),
        "intermediate_size": int(header.arch_key("feed_forward_length")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(header.arch_key("attention.head_count_kv", n_heads)),
        "rms_norm_eps": float(header.arch_key("attention.layer_norm_rms_epsilon", 1e-6)),
        "vocab_size": int(vocab),
        "rope_theta": float(header.arch_key("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(header.arch_key("context_length", 4096)),
        "tie_word_embeddings": tied,
        "head_dim": int(header.arch_key("attention.key_length", hidden // n_heads)),
    }
    if arch == "llama":
        config["rope_traditional"] = False  # rows are un-permuted on import
    return config


def _check_importable(header: GGUFHeader) -> None:
    if header.architecture not in SUPPORTED_ARCHITECTURES:
        raise ConvaError(
            f"{header.path}: architecture '{header.architecture}' is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    check_supported_types(header)


def dequantize_tensor(header: GGUFHeader, name: str, rows: slice | None = None) -> np.ndarray:
    """A quantized tensor (or a slice of its rows) as float32, by the `gguf` package's numpy
    dequantizer."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    info = header.tensors[name]
    n_rows = int(np.prod(info.shape[:-1])) if len(info.shape) > 1 else 1
    row_bytes = info.n_bytes // n_rows
    start, stop, _ = (rows or slice(None)).indices(n_rows)
    raw = np.fromfile(header.path, dtype=np.uint8, count=(stop - start) * row_bytes,
                      offset=info.offset + start * row_bytes)
    try:
        values = dequantize(raw.reshape(stop - start, row_bytes),
                            GGMLQuantizationType(info.type_id))
    except (ValueError, NotImplementedError) as exc:
        raise ConvaError(f"{header.path}: cannot dequantize {name} ({info.type_name}): {exc}"
                         ) from exc
    shape = (stop - start, *info.shape[1:]) if rows is not None else info.shape
    return np.asarray(values, dtype=np.float32).reshape(shape)


CHUNK_VALUES = 1 << 24  # weights dequantized at once (64 MB of float32): bounds peak memory


def _requantized(header: GGUFHeader, name: str) -> tuple[mx.array, mx.array, mx.array, int]:
    """A GGUF quantized tensor as MLX affine weights (group 32) with enough bits to hold it.

    Large tensors (the 151,936-row embedding of Qwen2.5) go through in row chunks, so the
    float32 copy never exists whole."""
    info = header.tensors[name]
    bits = REQUANT_BITS[info.type_name]
    n_rows = info.shape[0]
    step = max(1, CHUNK_VALUES // max(1, int(np.prod(info.shape[1:]))))
    parts: list[tuple[mx.array, mx.array, mx.array]] = []
    for start in range(0, n_rows, step):
        rows = slice(start, min(n_rows, start + step)) if len(info.shape) > 1 else None
        w = mx.array(dequantize_tensor(header, name, rows))
        q = mx.quantize(w, group_size=GROUP_SIZE, bits=bits)
        mx.eval(*q)
        parts.append((q[0], q[1], q[2]))
        if rows is None:
            break
    if len(parts) == 1:
        return (*parts[0], bits)
    wq, scales, biases = (mx.concatenate([p[i] for p in parts]) for i in range(3))
    mx.eval(wq, scales, biases)
    return wq, scales, biases, bits


def _native_quantized(header: GGUFHeader) -> dict[str, mx.array]:
    """Q8_0/Q4_0/Q4_1 tensors exactly as MLX reads them (files with no other quant type)."""
    try:
        loaded = mx.load(str(header.path))
    except Exception as exc:  # mlx raises RuntimeError / ValueError on corrupt data
        raise ConvaError(f"{header.path}: could not read GGUF tensor data ({exc})") from exc
    assert isinstance(loaded, dict)
    return loaded


def gguf_to_mlx_weights(header: GGUFHeader, advance: Callable[[int], None] = lambda _n: None
                        ) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """Read all tensors as mlx-lm parameters; return (weights, per-module quantization).

    Files whose quant types MLX reads itself (Q8_0, Q4_0, Q4_1) keep those weights bit for
    bit. Any other quant type (K-quants, Q5_0, Q5_1) makes every quantized tensor go
    through `gguf`'s dequantizer and MLX's affine quantizer, one tensor at a time.
    `advance(1)` is called after each tensor.
    """
    _check_importable(header)
    types = {t.type_name for t in header.tensors.values()} - FLOAT_TYPES
    loaded = _native_quantized(header) if types <= MLX_NATIVE_QUANT else {}
    arch = header.architecture
    n_heads = int(header.arch_key("attention.head_count"))
    n_kv = int(header.arch_key("attention.head_count_kv", n_heads))
    weights: dict[str, mx.array] = {}
    quant: dict[str, Any] = {}
    for name, info in header.tensors.items():
        target = hf_name(name)
        module = target.rsplit(".", 1)[0]
        parts: dict[str, mx.array]
        if info.type_name in FLOAT_TYPES:
            parts = {target: _read_float_tensor(header, name)}
        elif not loaded:
            wq, scales, biases, bits = _requantized(header, name)
            parts = {target: wq, f"{module}.scales": scales, f"{module}.biases": biases}
            quant[module] = {"group_size": GROUP_SIZE, "bits": bits}
        else:
            base = name.rsplit(".", 1)[0] if name.endswith(".weight") else name
            parts = {target: loaded[name],
                     f"{module}.scales": loaded[f"{base}.scales"],
                     f"{module}.biases": loaded[f"{base}.biases"]}
            w, s = parts[target], parts[f"{module}.scales"]
            bits = w.shape[-1] * 32 // (s.shape[-1] * GROUP_SIZE)
            quant[module] = {"group_size": GROUP_SIZE, "bits": int(bits)}
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            heads = n_heads if ".attn_q." in name else n_kv
            parts = {k: unpermute_rows(v, heads) for k, v in parts.items()}
        weights.update(parts)
        advance(1)
    return weights, quant


def import_gguf(
    gguf_path: str | Path,
    out_dir: str | Path,
    progress: Callable[[str], None] | None = None,
    overwrite: bool = False,
    show_progress: bool = False,
) -> Path:
    """Convert a GGUF file into an mlx-lm model directory at `out_dir` (atomically).

    `show_progress` draws a bar over the tensors (with ETA) on stderr.

    An existing model directory at `out_dir` is replaced only with `overwrite` (its other
    files are kept); any other non-empty directory, or a file, is refused untouched.
    """
    header = read_gguf_header(gguf_path)
    _check_importable(header)
    out = check_output_dir(out_dir, MODEL_OUTPUT, overwrite)
    if progress:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(header.tensor_type_counts().items()))
        progress(f"{header.architecture}, {len(header.tensors)} tensors ({counts})")
    with progress_bar(len(header.tensors), "converting tensors",
                      enabled=show_progress) as advance:
        weights, quant = gguf_to_mlx_weights(header, advance)
    config = _model_config(header, tied="lm_head.weight" not in weights)
    if quant:
        bits_seen = [q["bits"] for q in quant.values()]
        default_bits = max(set(bits_seen), key=bits_seen.count)
        config["quantization"] = {"group_size": GROUP_SIZE, "bits": default_bits}
        for module, q in quant.items():
            if q["bits"] != default_bits:
                config["quantization"][module] = q
        config["quantization_config"] = config["quantization"]
    config["conva_source"] = {"gguf": header.path.name,
                              "file_type": header.metadata.get("general.file_type")}
    with staged_output_dir(out, MODEL_OUTPUT, overwrite) as tmp:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        write_tokenizer_files(header, tmp)
    return out
