"""Layer access on Llama, Qwen2 and Qwen3: discovery, bit-identity, restore, pass-through."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.models.cache import make_prompt_cache

from conva_mlx.models.layers import HookedBlock, find_blocks, hooked_blocks, parse_layers
from conva_mlx.models.loading import LoadedModel


def test_blocks_are_found(tiny_lm: LoadedModel) -> None:
    blocks = find_blocks(tiny_lm.model)
    assert len(blocks) == tiny_lm.num_layers == 4


def test_zero_perturbation_is_bit_identical(tiny_lm: LoadedModel) -> None:
    ids = mx.array([[3, 14, 159, 26, 535]])
    plain = tiny_lm.model(ids)
    zero = mx.zeros((tiny_lm.hidden_size,))
    hooks = {k: (lambda _k, h: h + zero) for k in range(tiny_lm.num_layers)}
    with hooked_blocks(tiny_lm.model, hooks):
        hooked = tiny_lm.model(ids)
    assert mx.array_equal(plain, hooked).item()


def test_hook_modifies_output(tiny_lm: LoadedModel) -> None:
    ids = mx.array([[3, 14, 159]])
    plain = tiny_lm.model(ids)
    with hooked_blocks(tiny_lm.model, {1: lambda _k, h: h + 1.0}):
        moved = tiny_lm.model(ids)
    assert not mx.allclose(plain, moved).item()


def test_blocks_are_restored_after_an_exception(tiny_lm: LoadedModel) -> None:
    before = list(find_blocks(tiny_lm.model))
    with pytest.raises(RuntimeError), hooked_blocks(tiny_lm.model, {0: lambda _k, h: h}):
        assert isinstance(find_blocks(tiny_lm.model)[0], HookedBlock)
        raise RuntimeError("boom")
    after = find_blocks(tiny_lm.model)
    assert all(a is b for a, b in zip(before, after))


def test_wrapper_passes_attributes_through(tiny_lm: LoadedModel) -> None:
    block = find_blocks(tiny_lm.model)[0]
    with hooked_blocks(tiny_lm.model, {0: lambda _k, h: h}):
        wrapped = find_blocks(tiny_lm.model)[0]
        assert wrapped.self_attn is block.self_attn
        assert wrapped.wrapped is block
        cache = make_prompt_cache(tiny_lm.model)  # reads block attributes
        assert len(cache) == tiny_lm.num_layers


def test_layer_specs_parse() -> None:
    assert parse_layers("2-4,7", 10) == [2, 3, 4, 7]
    assert parse_layers("-1", 10) == [9]
    assert parse_layers(None, 10) is None
