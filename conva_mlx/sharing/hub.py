"""Share packs through the Hugging Face Hub: push a pack with a model card, pull one back.

Push uploads a staging copy of the pack: pack.json, vectors.safetensors, results.md (if the
pack has one) and a freshly generated README.md model card; pack.json's `files` then holds
the sha256 of every other uploaded file. Pull downloads (or, offline, reads the local Hugging
Face cache), verifies every checksum in `files` and validates the pack before it is used.
The token comes from the standard Hugging Face login (`hf auth login` or HF_TOKEN) and is
never printed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conva_mlx.errors import ConvaError
from conva_mlx.fsutil import sha256_file
from conva_mlx.packs.model_card import render_model_card
from conva_mlx.packs.pack import PACK_JSON, README, VECTORS, load_pack, read_pack_json

RESULTS = "results.md"
ALLOW_PATTERNS = [PACK_JSON, VECTORS, README, RESULTS]
HUB_TAGS = ["conva", "steering-vector", "mlx", "control-vector"]


@dataclass
class StagedFile:
    name: str
    size: int
    sha256: str


@dataclass
class PushPlan:
    repo_id: str
    private: bool
    files: list[StagedFile]
    model_card: str


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment at call time."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("", "0", "false",
                                                                         "no", "off")


def check_repo_id(repo_id: str) -> str:
    repo_id = repo_id.strip().removeprefix("hf://").strip("/")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or any(" " in p for p in parts):
        raise ConvaError(f"'{repo_id}' is not a Hub repo id (use owner/name)")
    return repo_id


# ----- push ---------------------------------------------------------------------------
@contextmanager
def staged_pack(pack_dir: str | Path, repo_id: str) -> Iterator[tuple[Path, str]]:
    """A temporary copy of the pack ready to upload: (folder, model card text)."""
    src = Path(pack_dir)
    pack = load_pack(src)  # validates the pack and its vectors checksum
    results = src / RESULTS
    eval_table = results.read_text() if results.is_file() else None
    card = render_model_card(pack, eval_table=eval_table, repo_id=repo_id)
    with tempfile.TemporaryDirectory(prefix="conva-push-") as tmp:
        out = Path(tmp)
        shutil.copy2(src / VECTORS, out / VECTORS)
        if results.is_file():
            shutil.copy2(results, out / RESULTS)
        (out / README).write_text(card, encoding="utf-8")
        meta = json.loads((src / PACK_JSON).read_text())
        meta["files"] = {f.name: sha256_file(f) for f in sorted(out.iterdir())}
        (out / PACK_JSON).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        yield out, card


def _listing(folder: Path) -> list[StagedFile]:
    return [StagedFile(f.name, f.stat().st_size, sha256_file(f))
            for f in sorted(folder.iterdir()) if f.is_file()]


def plan_push(pack_dir: str | Path, repo_id: str, private: bool = False) -> PushPlan:
    """What push would upload (the --dry-run view); needs no network and no token."""
    repo_id = check_repo_id(repo_id)
    with staged_pack(pack_dir, repo_id) as (folder, card):
        return PushPlan(repo_id, private, _listing(folder), card)


def push_pack(pack_dir: str | Path, repo_id: str, private: bool = False,
              message: str | None = None) -> str:
    """Upload the pack to a Hub model repo (created if needed); returns the repo URL."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    repo_id = check_repo_id(repo_id)
    if _offline():
        raise ConvaError("HF_HUB_OFFLINE is set: cannot push (unset it, or use --dry-run)")
    token = get_token()
    if not token:
        raise ConvaError("not logged in to the Hugging Face Hub: run `hf auth login` "
                         "(or set HF_TOKEN)")
    api = HfApi(token=token)
    try:
        with staged_pack(pack_dir, repo_id) as (folder, _card):
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                              commit_message=message or "Upload conva-mlx vector pack")
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        raise ConvaError(f"the Hub refused the upload to '{repo_id}' "
                         f"(HTTP {status or '?'}; check the repo name and your write access)"
                         ) from exc
    except OSError as exc:
        raise ConvaError(f"could not reach the Hugging Face Hub ({type(exc).__name__})"
                         ) from exc
    return str(url)


# ----- pull ---------------------------------------------------------------------------
def verify_pack_files(folder: Path) -> None:
    """Every file listed in pack.json `files` must exist and match its sha256."""
    meta_file = folder / PACK_JSON
    meta = read_pack_json(folder)
    files = meta.get("files") or {}
    if VECTORS not in files:
        raise ConvaError(f"{meta_file}: no checksum for {VECTORS}; refusing an unverifiable "
                         "pack")
    for name, digest in files.items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise ConvaError(f"{meta_file}: bad file name {name!r} in 'files'")
        f = folder / name
        if not f.is_file():
            raise ConvaError(f"{f}: listed in {PACK_JSON} but missing")
        if sha256_file(f) != digest:
            raise ConvaError(f"{f}: checksum does not match {PACK_JSON} (file changed or "
                             "corrupt); refusing to use it. Delete it from the Hugging Face "
                             "cache and pull again")


def _download(repo_id: str, revision: str | None, local_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, repo_type="model", revision=revision,
                                  cache_dir=str(hf_cache_dir()),
                                  allow_patterns=ALLOW_PATTERNS,
                                  local_files_only=local_only))


def pull_pack(repo_id: str, revision: str | None = None) -> Path:
    """Download a pack (or read it from the local Hugging Face cache), verify, return its dir."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id = check_repo_id(repo_id)
    folder: Path | None = None
    if not _offline():
        try:
            folder = _download(repo_id, revision, local_only=False)
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            raise ConvaError(f"'{repo_id}' was not found on the Hugging Face Hub (or it is "
                             "private: log in with `hf auth login`)") from exc
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError):
            folder = None  # network trouble: fall back to the local cache
    if folder is None:
        try:
            folder = _download(repo_id, revision, local_only=True)
        except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
            why = ("HF_HUB_OFFLINE is set" if _offline() else
                   "the Hugging Face Hub could not be reached")
            raise ConvaError(f"pack '{repo_id}' is not in the local Hugging Face cache "
                             f"({hf_cache_dir()}) and {why}; connect and run "
                             f"`conva-mlx pull {repo_id}`") from exc
    verify_pack_files(folder)
    load_pack(folder)  # validates format, shapes and values
    return folder
