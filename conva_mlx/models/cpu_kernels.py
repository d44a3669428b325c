"""Faster activations for MLX's CPU backend.

MLX's CPU `exp` (behind sigmoid, SiLU, tanh) runs about 25x slower than numpy's on this
x86 CPU (6.1 ms vs 0.27 ms for 467k floats), so the SwiGLU of a Llama/Qwen MLP cost
more than its three matmuls during capture. Here exp is rebuilt from ops MLX does fast
(Cody-Waite range reduction, the Cephes expf polynomial, 2^n from the exponent bits) and
the whole SwiGLU is compiled into one fused kernel: 3-4x faster, within 1.5e-7
relative error of float64 (MLX's own SiLU is within 2.7e-7).

`install_fast_swiglu` swaps the MLP class of known architectures for a subclass that
calls it; parameters, names and weights stay as they are.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693359375  # ln 2 split in two so n * ln2 is exact in float32
_LN2_LO = -2.12194440e-4
_ROUND_MAGIC = 12582912.0  # 1.5 * 2^23: adding and subtracting it rounds to an integer
_EXPF_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
              1.6666665459e-1, 5.0000001201e-1)


def fast_exp(x: mx.array) -> mx.array:
    """exp of a float32 array from multiplies, adds and bit ops (no MLX transcendental)."""
    x = mx.minimum(mx.maximum(x, -87.0), 88.0)  # float32 range: no inf, no denormals
    n = (x * _LOG2E + _ROUND_MAGIC) - _ROUND_MAGIC
    r = x - n * _LN2_HI - n * _LN2_LO  # |r| <= ln2 / 2
    p: Any = _EXPF_POLY[0]
    for coeff in _EXPF_POLY[1:]:
        p = p * r + coeff
    poly = p * r * r + r + 1.0
    two_n = ((n.astype(mx.int32) + 127) << 23).view(mx.float32)
    return poly * two_n


@mx.compile
def fast_silu(x: mx.array) -> mx.array:
    xf = x.astype(mx.float32)
    return (xf / (1.0 + fast_exp(-xf))).astype(x.dtype)


@mx.compile
def fast_swiglu(gate: mx.array, x: mx.array) -> mx.array:
    g = gate.astype(mx.float32)
    return (g / (1.0 + fast_exp(-g))).astype(gate.dtype) * x


def _fast_mlp_call(self: Any, x: mx.array) -> mx.array:
    return self.down_proj(fast_swiglu(self.gate_proj(x), self.up_proj(x)))


def _swiglu_mlp_classes() -> tuple[type, ...]:
    """MLP classes whose forward is exactly down_proj(swiglu(gate_proj(x), up_proj(x)))."""
    from mlx_lm.models import llama, qwen2, qwen3

    return (llama.MLP, qwen2.MLP, qwen3.MLP)


_FAST_CLASSES: dict[type, type] = {}


def _fast_class(cls: type) -> type:
    if cls not in _FAST_CLASSES:
        _FAST_CLASSES[cls] = type(f"FastCpu{cls.__name__}", (cls,),
                                  {"__call__": _fast_mlp_call})
    return _FAST_CLASSES[cls]


def install_fast_swiglu(model: nn.Module) -> int:
    """Give every known SwiGLU MLP in `model` the fast activation; returns how many."""
    known = _swiglu_mlp_classes()
    swapped = 0
    for _, module in model.named_modules():
        if type(module) in known:
            module.__class__ = _fast_class(type(module))
            swapped += 1
    return swapped
