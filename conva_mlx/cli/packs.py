"""Load the model a `--pack` argument was made for, checking they belong together."""

from __future__ import annotations

from conva_mlx.models.loading import LoadedModel, load_model
from conva_mlx.packs.pack import Pack


def load_model_for_pack(model_spec: str, dtype: str, pack: Pack) -> LoadedModel:
    lm = load_model(model_spec, dtype)
    pack.check_model(lm.model_id, lm.fingerprint)
    return lm
