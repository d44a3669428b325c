"""`conva-mlx pack verify`: check a pack's files, schema and tensor binding."""

from __future__ import annotations

import click

from conva_mlx.packs.verify import verify_pack
from conva_mlx.sharing.pack_source import resolve_pack_path


@click.group("pack")
def pack_group() -> None:
    """Check vector packs."""


@pack_group.command("verify")
@click.argument("pack_spec")
@click.option("--record", is_flag=True,
              help="Bind a pack made by hand or by an old version: record the missing pack "
                   "id and checksum (never overrides a wrong checksum).")
def verify(pack_spec: str, record: bool) -> None:
    """Check every file, field and tensor of the pack PACK_SPEC (directory or hf://ID)."""
    path = resolve_pack_path(pack_spec)
    rep = verify_pack(path, record)
    pack = rep.pack
    if rep.recorded:
        click.echo(f"recorded pack id {rep.pack_id} and the sha256 of vectors.safetensors "
                   f"in {path}/pack.json")
    gate = f"gate at block {pack.gate.layer}" if pack.gate is not None else "no gate"
    click.echo(f"ok: {path}: {len(pack.values)} value(s) ({', '.join(pack.values)}), {gate}, "
               f"for model '{pack.model.model_id}' (fingerprint {pack.model.fingerprint}); "
               f"vectors sha256 {rep.sha256[:16]}..., pack id {rep.pack_id or 'none'}")
