"""Find the decoder blocks of an mlx-lm model and intercept their outputs.

Layer index k always means the output of decoder block k (0-based) = mlx-lm
`model.layers[k]` output = Hugging Face `hidden_states[k + 1]` = llama.cpp `direction.k`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from conva_mlx.errors import ConvaError

# The one statement of the convention, written into packs, exports and model cards.
LAYER_CONVENTION = ("layer k = output of decoder block k (0-based) = mlx-lm model.layers[k] "
                    "output = HF hidden_states[k+1] = llama.cpp direction.k")

# A hook sees (block index, block output) and returns the (possibly modified) output.
BlockHook = Callable[[int, mx.array], mx.array]

_CONTAINER_PATHS = (
    ("model", "layers"),
    ("layers",),
    ("model", "model", "layers"),
    ("language_model", "model", "layers"),
    ("model", "language_model", "layers"),
    ("transformer", "h"),
    ("backbone", "layers"),
)


def _find_container(model: nn.Module) -> tuple[Any, str]:
    """Return (object holding the block list, attribute name)."""
    for path in _CONTAINER_PATHS:
        obj: Any = model
        ok = True
        for name in path[:-1]:
            if not hasattr(obj, name):
                ok = False
                break
            obj = getattr(obj, name)
        if ok and isinstance(getattr(obj, path[-1], None), list) and getattr(obj, path[-1]):
            return obj, path[-1]
    raise ConvaError(f"cannot find the decoder blocks of {type(model).__name__} "
                     "(looked for model.layers and its variants)")


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's decoder blocks, in order (the live list)."""
    holder, attr = _find_container(model)
    blocks: list[nn.Module] = getattr(holder, attr)
    return blocks


class HookedBlock(nn.Module):
    """Wraps a decoder block; passes every attribute through; applies a hook to its output."""

    def __init__(self, block: nn.Module, index: int, hook: BlockHook) -> None:
        super().__init__()
        # Stored outside the module dict so parameters are not duplicated under a new name.
        object.__setattr__(self, "_block", block)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_hook", hook)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)

    @property
    def wrapped(self) -> nn.Module:
        return object.__getattribute__(self, "_block")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.wrapped(*args, **kwargs)
        if isinstance(out, tuple):  # some blocks return (hidden, extras)
            return (self._hook(self._index, out[0]), *out[1:])
        return self._hook(self._index, out)


@contextmanager
def hooked_blocks(model: nn.Module, hooks: dict[int, BlockHook]) -> Iterator[list[nn.Module]]:
    """Install hooks on the given block indices; always restore the original blocks."""
    blocks = find_blocks(model)
    n = len(blocks)
    for k in hooks:
        if not 0 <= k < n:
            raise ConvaError(f"layer {k} is out of range (the model has blocks 0..{n - 1})")
    originals = list(blocks)
    try:
        for k, hook in hooks.items():
            blocks[k] = HookedBlock(originals[k], k, hook)
        yield originals
    finally:
        blocks[:] = originals


class _SkippedBlock:
    """Stands in for a block whose output is already known: computes nothing, and passes
    attribute reads to the block (the model's loop may read e.g. `use_sliding`)."""

    def __init__(self, block: nn.Module, output: mx.array | None) -> None:
        self.block, self.output = block, output

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["block"], name)

    def __call__(self, x: mx.array, *args: Any, **kwargs: Any) -> mx.array:
        return x if self.output is None else self.output


@contextmanager
def skipped_blocks(model: nn.Module, upto: int, output: mx.array) -> Iterator[None]:
    """Run a forward pass that starts after block `upto`, whose output is `output`.

    Blocks 0..upto compute nothing (the last of them returns `output`), so a pass that
    stopped after block `upto` can be resumed from its saved hidden states. Only for
    blocks that return a plain array (Llama, Qwen2, Qwen3); restores the blocks on exit.
    """
    blocks = find_blocks(model)
    if not 0 <= upto < len(blocks):
        raise ConvaError(f"layer {upto} is out of range "
                         f"(the model has blocks 0..{len(blocks) - 1})")
    originals = list(blocks)
    try:
        for k in range(upto + 1):
            blocks[k] = _SkippedBlock(originals[k], output if k == upto else None)  # type: ignore[call-overload]
        yield
    finally:
        blocks[:] = originals


def parse_layers(spec: str | None, num_layers: int) -> list[int] | None:
    """Parse "10-20", "3,5,7", "all", "-5" (negative = from the end) into block indices."""
    if spec is None or spec in ("", "auto"):
        return None
    if spec == "all":
        return list(range(num_layers))
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else part[1:].split("-", 1)
                out.extend(range(int(lo), int(hi) + 1))
            else:
                k = int(part)
                out.append(k if k >= 0 else num_layers + k)
        except ValueError as exc:
            raise ConvaError(f"cannot parse layers '{spec}' (use e.g. 8-20 or 3,5,7)") from exc
    bad = [k for k in out if not 0 <= k < num_layers]
    if bad:
        raise ConvaError(
            f"layers {bad} are out of range (the model has blocks 0..{num_layers - 1})")
    return sorted(set(out))
