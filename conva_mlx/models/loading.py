"""Load a model from any spec: `default`, a local MLX directory, a `.gguf` file or a Hub repo id.

Compute dtype policy: on a CPU device, small models run dequantized in float32 (MLX's CPU
quantized matmul is much slower than float32 + BLAS); on a GPU they stay quantized.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

from conva_mlx.errors import ConvaError
from conva_mlx.fsutil import cache_dir, ensure_standard_streams, sha256_file
from conva_mlx.models.default_model import DEFAULT_MODEL_ID, ensure_default_model
from conva_mlx.models.gguf_import import import_gguf
from conva_mlx.models.wheel_models import WHEEL_MODELS, ensure_wheel_model

DType = Literal["auto", "float32", "float16", "bfloat16", "quantized"]
DTYPES: tuple[str, ...] = ("auto", "float32", "float16", "bfloat16", "quantized")
# Dequantize to float32 on CPU for models up to this many parameters.
CPU_FLOAT32_MAX_PARAMS = 3_000_000_000


@dataclass
class LoadedModel:
    """An mlx-lm model with its tokenizer and identity."""

    model: nn.Module
    tokenizer: Any  # mlx_lm TokenizerWrapper
    path: Path
    model_id: str
    fingerprint: str
    architecture: str
    num_layers: int
    hidden_size: int
    dtype: str
    context_length: int = 0  # max_position_embeddings; 0 = not stated by the config

    def check_prompt_length(self, n_tokens: int) -> None:
        """Refuse a prompt the model cannot attend over, before any work is done."""
        if self.context_length and n_tokens > self.context_length:
            raise ConvaError(f"the prompt is {n_tokens} tokens, longer than the model's "
                             f"context of {self.context_length} tokens; shorten it")

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """Render messages with the model's chat template, ready for generation."""
        return str(self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False))


def _gguf_to_cache(path: Path) -> Path:
    digest = sha256_file(path)[:16]
    out = cache_dir() / "models" / f"{path.stem}-{digest}-mlx"
    if not (out / "config.json").is_file():
        import_gguf(path, out)
    return out


def _hub_to_path(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

    try:
        return Path(snapshot_download(repo_id, local_files_only=True,
                                      allow_patterns=DEFAULT_ALLOW_PATTERNS))
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise ConvaError(f"model '{repo_id}' is not in the local Hugging Face cache and "
                         "HF_HUB_OFFLINE is set")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=DEFAULT_ALLOW_PATTERNS))
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ConvaError(f"could not get model '{repo_id}' from the Hugging Face Hub and it "
                         f"is not cached locally ({type(exc).__name__})") from exc


def _log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_model_path(spec: str) -> tuple[Path, str]:
    """Turn a model spec into (local MLX directory, human-readable model id)."""
    if spec == "default":
        return ensure_default_model(), DEFAULT_MODEL_ID
    if spec in WHEEL_MODELS:
        named = WHEEL_MODELS[spec]
        return ensure_wheel_model(named, _log_to_stderr), named.model_id
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ConvaError(f"{p}: no such GGUF file")
        return _gguf_to_cache(p), p.name
    if p.exists():
        if not (p / "config.json").is_file():
            raise ConvaError(f"{p}: not an MLX model directory (no config.json)")
        return p, p.name
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return _hub_to_path(spec), spec
    raise ConvaError(f"model '{spec}' not found: give 'default', "
                     f"{', '.join(repr(n) for n in WHEEL_MODELS)}, a local MLX directory, "
                     "a .gguf file or a Hugging Face repo id (owner/name)")


def model_fingerprint(path: Path) -> str:
    """Identity of the weights on disk: config plus size and edges of each weight file.

    Independent of the compute dtype, so a pack made in float32 on a CPU is valid for the
    same quantized checkpoint on a GPU. Reads only 2 MB per file, so it is cheap for 7B models.
    """
    h = hashlib.sha256()
    config = json.loads((path / "config.json").read_text())
    config.pop("conva_source", None)
    h.update(json.dumps(config, sort_keys=True).encode())
    for f in sorted(path.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def _num_params(model: nn.Module) -> int:
    total = 0
    flat: list[tuple[str, mx.array]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    for _, v in flat:
        if isinstance(v, mx.array):  # packed 4-bit weights hold 8 values per uint32
            total += v.size * (8 if v.dtype == mx.uint32 else 1)
    return total


def choose_dtype(requested: str, model: nn.Module) -> str:
    if requested not in DTYPES:
        raise ConvaError(f"unknown dtype '{requested}' (choose from {', '.join(DTYPES)})")
    if requested != "auto":
        return requested
    on_cpu = mx.default_device() == mx.cpu
    return "float32" if on_cpu and _num_params(model) <= CPU_FLOAT32_MAX_PARAMS else "quantized"


def apply_dtype(model: nn.Module, dtype: str) -> None:
    if dtype == "quantized":
        return
    from mlx_lm.utils import dequantize_model

    target = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}[dtype]
    if dtype == "float32":
        # Upcast scales/biases first so the dequantized weights are exact in float32.
        model.update(tree_map(
            lambda x: x.astype(mx.float32) if mx.issubdtype(x.dtype, mx.floating) else x,
            model.parameters()))
    dequantize_model(model)
    params = tree_map(lambda x: x.astype(target) if mx.issubdtype(x.dtype, mx.floating) else x,
                      model.parameters())
    model.update(params)
    mx.eval(model.parameters())


def load_model(spec: str = "default", dtype: str = "auto") -> LoadedModel:
    """Load model + tokenizer from a spec, applying the compute dtype policy."""
    from mlx_lm import load as mlx_load

    ensure_standard_streams()  # a closed stdin would break MLX's file loading
    path, model_id = resolve_model_path(spec)
    try:
        model, tokenizer, config = mlx_load(  # type: ignore[misc]
            str(path), return_config=True)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise ConvaError(f"could not load model from {path}: {exc}") from exc
    # We check prompt length against the model's context ourselves (check_prompt_length);
    # without this, transformers warns about long texts before our message can say so.
    hf_tokenizer = getattr(tokenizer, "_tokenizer", None)
    if hf_tokenizer is not None and hasattr(hf_tokenizer, "model_max_length"):
        hf_tokenizer.model_max_length = 1 << 40
    chosen = choose_dtype(dtype, model)
    apply_dtype(model, chosen)
    if mx.default_device() == mx.cpu:
        from conva_mlx.models.cpu_kernels import install_fast_swiglu

        install_fast_swiglu(model)
    from conva_mlx.models.layers import find_blocks

    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        path=path,
        model_id=model_id,
        fingerprint=model_fingerprint(path),
        architecture=str(config.get("model_type", "unknown")),
        num_layers=len(find_blocks(model)),
        hidden_size=int(config.get("hidden_size", 0)),
        dtype=chosen,
        context_length=int(config.get("max_position_embeddings") or 0),
    )
