"""The pack an `eval --recipe` run steers with: extracted once into the run directory."""

from __future__ import annotations

from pathlib import Path

from conva_mlx.data.dataset import ValueData
from conva_mlx.errors import ConvaError, warn
from conva_mlx.extraction import ExtractOptions, extract_pack
from conva_mlx.models.loading import LoadedModel
from conva_mlx.packs.pack import PACK_JSON, Pack, load_pack
from conva_mlx.packs.save import save_pack
from conva_mlx.probes.recipe import Recipe


def recipe_pack_dir(out: Path, recipe: Recipe) -> Path:
    return out / f"pack-{recipe.name}"


def ensure_recipe_pack(lm: LoadedModel, recipe: Recipe, out: Path, values: list[str],
                       data: ValueData, with_uncontrolled: bool,
                       show_progress: bool = True) -> tuple[Pack, Path]:
    """Reuse OUT/pack-RECIPE when it was made by this recipe for this model and has the
    values asked for; otherwise extract it (all 10 values, so later runs can reuse it)."""
    path = recipe_pack_dir(out, recipe)
    if (path / PACK_JSON).is_file():
        pack = load_pack(path)
        pack.check_model(lm.model_id, lm.fingerprint)
        if pack.recipe != recipe:
            raise ConvaError(f"{path} was made with another version of recipe "
                             f"'{recipe.name}'; remove it or use another --out")
        missing = [v for v in values if v not in pack.values]
        needs_unc = with_uncontrolled and any(pack.values[v].uncontrolled is None
                                              for v in values if v in pack.values)
        if not missing and not needs_unc:
            return pack, path
        warn(f"{path} lacks {', '.join(missing) or 'the uncontrolled probes'}: extracting "
             "it again")
    opts = ExtractOptions(recipe=recipe, with_uncontrolled=with_uncontrolled)
    pack = extract_pack(lm, None, data, opts, show_progress=show_progress)
    save_pack(pack, path, overwrite=True)
    return pack, path
