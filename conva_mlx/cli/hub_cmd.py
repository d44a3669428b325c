"""`conva-mlx push` and `conva-mlx pull`: share packs on the Hugging Face Hub."""

from __future__ import annotations

import click

from conva_mlx.cli.options import log


@click.command()
@click.argument("pack_dir", type=click.Path(file_okay=False))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repo as private.")
@click.option("--message", default=None, help="Commit message.")
@click.option("--dry-run", is_flag=True,
              help="Show the exact files and the model card; upload nothing.")
def push(pack_dir: str, repo_id: str, private: bool, message: str | None,
         dry_run: bool) -> None:
    """Upload the pack in PACK_DIR to the Hub model repo REPO_ID (owner/name).

    Uses your Hugging Face login (`hf auth login` or HF_TOKEN); the token is never shown.
    """
    from conva_mlx.sharing.hub import plan_push, push_pack

    if dry_run:
        plan = plan_push(pack_dir, repo_id, private)
        click.echo(f"dry run: would upload to {plan.repo_id} "
                   f"({'private' if plan.private else 'public'} model repo):")
        for f in plan.files:
            click.echo(f"  {f.name}  {f.size} bytes  sha256 {f.sha256}")
        click.echo("")
        click.echo("----- README.md (model card) -----")
        click.echo(plan.model_card)
        return
    url = push_pack(pack_dir, repo_id, private, message)
    click.echo(f"pushed {pack_dir} to {url}")


@click.command()
@click.argument("repo_id")
@click.option("--revision", default=None, help="Branch, tag or commit.")
@click.option("--model", "model_spec", default=None,
              help="Also check that the pack fits this model ('default', 'qwen2.5-0.5b', "
                   "'qwen2.5-1.5b', a directory, a .gguf or a Hub id).")
@click.option("--dtype", default="auto", show_default=True)
def pull(repo_id: str, revision: str | None, model_spec: str | None, dtype: str) -> None:
    """Download a pack from the Hub (or use the local cache), verify it, print its path."""
    from conva_mlx.packs.pack import load_pack
    from conva_mlx.sharing.hub import pull_pack

    path = pull_pack(repo_id, revision)
    pack = load_pack(path)
    m = pack.model
    log(f"checksums verified; values: {', '.join(pack.values)}; made for '{m.model_id}' "
        f"(fingerprint {m.fingerprint})")
    if model_spec is not None:
        from conva_mlx.cli.packs import load_model_for_pack

        load_model_for_pack(model_spec, dtype, pack)
        log(f"the pack fits model '{model_spec}'")
    click.echo(str(path))
