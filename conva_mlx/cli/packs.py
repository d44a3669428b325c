"""Load the model a `--pack` argument was made for, checking they belong together."""

from __future__ import annotations

from pathlib import Path

from conva_mlx.models.loading import LoadedModel, load_model
from conva_mlx.packs.pack import Pack


def load_model_for_pack(model_spec: str, dtype: str, pack: Pack) -> LoadedModel:
    lm = load_model(model_spec, dtype)
    pack.check_model(lm.model_id, lm.fingerprint)
    return lm


def model_and_pack(pack_spec: str | None, model_spec: str, dtype: str, needs_pack: bool
                   ) -> tuple[LoadedModel, Pack | None, Path | None]:
    """The model and its pack: the one given, else (when steering needs one) the model's
    cached pack, extracted once into the user cache with the default recipe."""
    from conva_mlx.cli.options import log
    from conva_mlx.data.dataset import ValueData
    from conva_mlx.evaluation.recipe_pack import ensure_recipe_pack
    from conva_mlx.fsutil import cache_dir
    from conva_mlx.packs.pack import load_pack
    from conva_mlx.probes.recipe import get_recipe
    from conva_mlx.sharing.pack_source import resolve_pack_path
    from conva_mlx.values import VALUE_NAMES

    if pack_spec is not None:
        path = resolve_pack_path(pack_spec)
        pack = load_pack(path)
        return load_model_for_pack(model_spec, dtype, pack), pack, path
    lm = load_model(model_spec, dtype)
    if not needs_pack:
        return lm, None, None
    where = cache_dir() / "packs" / lm.fingerprint[:16]
    log(f"no --pack: using the model's cached pack in {where} (extracted once)")
    cached, path = ensure_recipe_pack(lm, get_recipe("accuracy"), where, list(VALUE_NAMES),
                                      ValueData(), with_uncontrolled=False)
    return lm, cached, path
