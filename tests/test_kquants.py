"""K-quant and Q5 GGUF import: re-quantized MLX weights stay within one grid step of
`gguf`'s own dequantized values, and the imported real Qwen2.5 model matches an
independent numpy forward pass.

MLX affine quantization stores, per group of 32 weights, a scale and a bias; re-quantizing
a group with b bits moves each weight by at most one step, about (max - min) / (2^b - 1),
plus float32 rounding. That is the tolerance checked here, on real tensors where the Qwen
file has them (Q4_K, Q5_0, Q6_K, Q8_0) and on synthetic blocks for the other types.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from conva_mlx.models.gguf_import import GROUP_SIZE, REQUANT_BITS, _requantized, dequantize_tensor
from conva_mlx.models.gguf_reader import GGML_TYPES, read_gguf_header
from conva_mlx.models.wheel_models import QWEN25_05B, fetch_gguf


@pytest.fixture(scope="session")
def qwen_gguf() -> Path:
    return fetch_gguf(QWEN25_05B)


def _check_requantized(ref: np.ndarray, wq: mx.array, scales: mx.array, biases: mx.array,
                       bits: int) -> float:
    """Every weight within one stored step of its group, and that step no coarser than the
    group's range needs. (Round to nearest gives half a step inside the grid; MLX's grid
    ends about one step short of the group's largest weight, which is then off by up to
    one step: measured 0.99 at most, median 0.49.)"""
    back = np.array(mx.dequantize(wq, scales, biases, group_size=GROUP_SIZE, bits=bits))
    step = np.abs(np.array(scales)).reshape(-1)
    groups = ref.reshape(-1, GROUP_SIZE)
    needed = (groups.max(1) - groups.min(1)) / (2 ** bits - 1)
    slack = 1e-6 * np.abs(groups).max(1) + 1e-7  # a constant group still gets a tiny step
    assert (step <= 2 * needed + slack).all(), "grid much coarser than the group's range"
    err = np.abs(back - ref).reshape(-1, GROUP_SIZE)
    bound = step[:, None] + 1e-6 * (1 + np.abs(groups))
    assert (err <= bound).all(), f"max excess {(err - bound).max()}"
    return float(err.max() / np.abs(ref).max())


@pytest.mark.parametrize("qtype", ["Q4_K", "Q5_0", "Q6_K", "Q8_0"])
def test_real_qwen_tensors_requantize_within_one_step(qwen_gguf: Path, qtype: str) -> None:
    header = read_gguf_header(qwen_gguf)
    name = next(n for n, t in header.tensors.items()
                if t.type_name == qtype and len(t.shape) == 2 and t.shape[0] <= 5000)
    ref = dequantize_tensor(header, name)
    wq, scales, biases, bits = _requantized(header, name)
    assert bits == REQUANT_BITS[qtype]
    rel = _check_requantized(ref, wq, scales, biases, bits)
    assert rel < 2 / (2 ** bits - 1)  # one step of a grid spanning [-max, max]


def _synthetic_blocks(qtype: str, rows: int, cols: int) -> np.ndarray:
    """Random K-quant blocks with sane fp16 super-block scales (any other bytes are valid)."""
    _, block, size = GGML_TYPES[GGMLQuantizationType[qtype].value]
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)
    offsets = {"Q2_K": (80, 82), "Q3_K": (108,), "Q5_K": (0, 2), "Q4_K": (0, 2), "Q6_K": (208,)}
    for off in offsets[qtype]:
        raw[..., off:off + 2] = scale
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "Q5_K", "Q5_1"])
def test_other_quant_types_requantize_within_one_step(qtype: str) -> None:
    rows, cols = 64, 512
    if qtype == "Q5_1":
        x = np.random.default_rng(1).normal(size=(rows, cols)).astype(np.float32)
        raw = quantize(x, GGMLQuantizationType.Q5_1)
    else:
        raw = _synthetic_blocks(qtype, rows, cols)
    ref = np.asarray(dequantize(raw, GGMLQuantizationType[qtype]), dtype=np.float32)
    assert ref.shape == (rows, cols) and np.isfinite(ref).all()
    bits = REQUANT_BITS[qtype]
    wq, scales, biases = mx.quantize(mx.array(ref), group_size=GROUP_SIZE, bits=bits)
    _check_requantized(ref, wq, scales, biases, bits)


def test_imported_qwen_matches_a_numpy_forward(qwen_gguf: Path) -> None:
    """Two checks: with gguf's exact dequantized weights swapped in, the MLX model equals
    the numpy reference (layout, biases, RoPE, norms); with the weights as imported
    (re-quantized), it stays close and predicts the same tokens."""
    from mlx.utils import tree_flatten

    from conva_mlx.models.gguf_import import hf_name
    from conva_mlx.models.loading import load_model
    from conva_mlx.models.wheel_models import ensure_wheel_model
    from tests.gguf_reference import reference_logits

    lm = load_model(str(ensure_wheel_model(QWEN25_05B)), dtype="float32")
    ids = lm.tokenizer.encode("def add(a, b):\n    return a + b  # the sum")
    ref = reference_logits(qwen_gguf, ids)
    scale = np.abs(ref).max()
    imported = np.array(lm.model(mx.array([ids]))[0].astype(mx.float32))
    assert (imported.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
    assert imported[-1].argmax() == ref[-1].argmax()
    assert np.corrcoef(imported.ravel(), ref.ravel())[0, 1] > 0.995
    assert np.abs(imported - ref).max() < 0.08 * scale  # measured 0.053

    header = read_gguf_header(qwen_gguf)
    params = dict(tree_flatten(lm.model.parameters()))
    exact = {}
    for name, info in header.tensors.items():
        if info.type_name in REQUANT_BITS:
            target = hf_name(name)
            assert params[target].shape == tuple(info.shape)
            exact[target] = mx.array(dequantize_tensor(header, name))
    lm.model.load_weights(list(exact.items()), strict=False)
    ours = np.array(lm.model(mx.array([ids]))[0].astype(mx.float32))
    assert np.abs(ours - ref).max() < 1e-3 * scale
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
