"""Atomic file writes and the user cache directory."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conva_mlx.errors import ConvaError


def cache_dir() -> Path:
    """Root of conva-mlx's user cache (override with CONVA_MLX_CACHE)."""
    env = os.environ.get("CONVA_MLX_CACHE")
    if env:
        root = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(base) / "conva-mlx"
    root.mkdir(parents=True, exist_ok=True)
    return root


def make_parents(path: Path) -> list[Path]:
    """Create the missing folders above `path`; return them, outermost first."""
    missing = [p for p in reversed(path.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConvaError(f"{path.parent}: cannot create this folder "
                         f"({_describe_os_error(exc)}); choose another location") from exc
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove folders `make_parents` created, innermost first, if they are still empty."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _cannot_write(folder: Path, name: str, exc: OSError) -> ConvaError:
    return ConvaError(f"{folder}: cannot write {name} in this folder "
                      f"({_describe_os_error(exc)}); make it writable or choose another "
                      "location")


_STANDARD = ((0, "stdin", os.O_RDONLY, "r"), (1, "stdout", os.O_WRONLY, "w"),
             (2, "stderr", os.O_WRONLY, "w"))


def ensure_standard_streams() -> None:
    """Point a closed stdin, stdout or stderr (a shell's `<&-`) at the null device.

    Otherwise the next file the process opens takes that number, and code that reads
    descriptor 0 as "no file" fails on it (MLX's safetensors loader does). The null
    device also stays open across the OpenBLAS re-exec."""
    for fd, name, flags, mode in _STANDARD:
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, flags)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        os.set_inheritable(fd, True)
        if getattr(sys, name) is None:  # Python found it closed at start-up
            setattr(sys, name, open(fd, mode, encoding="utf-8", closefd=False))  # noqa: SIM115


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only on success.

    On failure nothing is left behind: no temporary file, no folder made for `path`."""
    target = Path(path)
    created = make_parents(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:  # name the folder, not the temporary file
        remove_empty(created)
        raise _cannot_write(target.parent, target.name, exc) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; use the usual file mode
    try:
        yield tmp_path
        os.replace(tmp_path, target)
        created = []
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
        remove_empty(created)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def repair_jsonl_tail(path: Path) -> None:
    """A run killed mid-write can leave a partial last line: drop it. A whole record that
    only lost its newline keeps its record and gets the newline."""
    if not path.is_file():
        return
    raw = path.read_bytes()
    if not raw or raw.endswith(b"\n"):
        return
    cut = raw.rfind(b"\n") + 1
    try:
        json.loads(raw[cut:])
        complete = True
    except (json.JSONDecodeError, UnicodeDecodeError):
        complete = False
    with open(path, "r+b") as f:
        if complete:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """One whole line per record, flushed and synced before returning. The file is created
    by its first record, so a run that fails before producing anything leaves no file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class OutputKind:
    """A kind of directory conva-mlx writes: how to recognise it and which files are its own.

    Replacing an output (with --force) only ever touches `own` files; anything else a user
    keeps in the directory stays.
    """

    name: str  # "vector pack"
    manifest: str  # the file that marks the directory as this kind; written last
    own: tuple[str, ...]  # glob patterns of the files this kind consists of


def _describe_os_error(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _umask() -> int:
    umask = os.umask(0)  # the only way to read it is to set it
    os.umask(umask)
    return umask


def _check_writable(out: Path) -> None:
    """Create (and remove) a probe file in the nearest existing folder above `out`: a bad
    --out fails before any work, and a check creates no folder (writing does)."""
    folder = next(p for p in out.parents if p.exists() or p == p.parent)
    try:
        if not folder.is_dir():
            raise NotADirectoryError(20, "a file is in the way", str(folder))
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConvaError(f"{out}: cannot write here ({_describe_os_error(exc)})") from exc


def check_output_dir(path: str | os.PathLike[str], kind: OutputKind, force: bool = False) -> Path:
    """Refuse an output directory that would lose data; prove that it is writable.

    Allowed: a missing or empty directory, or (with `force`) one that already holds the
    same kind of output. Called before long work, so a bad --out fails in a second.
    """
    out = Path(path).expanduser()
    if out.is_symlink() and not out.exists():
        raise ConvaError(f"{out}: is a broken symbolic link; choose another output directory")
    if out.exists() and not out.is_dir():
        raise ConvaError(f"{out}: exists and is not a directory; choose another output path")
    if out.is_dir():
        try:
            entries = [p.name for p in out.iterdir()]
        except OSError as exc:
            raise ConvaError(f"{out}: cannot read ({_describe_os_error(exc)})") from exc
        if entries and not (out / kind.manifest).is_file():
            found = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
            raise ConvaError(f"{out}: is not empty and does not hold a {kind.name} (found "
                             f"{found}); choose a new or empty directory (nothing was written)")
        if entries and not force:
            raise ConvaError(f"{out}: already holds a {kind.name}; pass --force to replace it "
                             "(files that are not part of it are kept)")
    _check_writable(out)
    return out


def _own_files(folder: Path, kind: OutputKind) -> set[str]:
    return {p.name for pattern in kind.own for p in folder.glob(pattern) if p.is_file()}


def commit_output_dir(staged: Path, out: Path, kind: OutputKind) -> None:
    """Move a fully written staging directory to `out`.

    A new or empty `out` is replaced in one rename. An existing output of the same kind
    gets each new file by rename (the manifest last, so a crash leaves the old manifest,
    whose checksums then refuse the mix), loses only its own stale files, keeps the rest.
    """
    os.chmod(staged, 0o777 & ~_umask())  # mkdtemp makes 0700; use the usual directory mode
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(staged, out)
        return
    new = {p.name for p in staged.iterdir() if p.is_file()}
    stale = _own_files(out, kind) - new
    for name in sorted(new - {kind.manifest}):
        os.replace(staged / name, out / name)
    for name in sorted(stale - {kind.manifest}):
        (out / name).unlink()
    os.replace(staged / kind.manifest, out / kind.manifest)


@contextmanager
def staged_output_dir(path: str | os.PathLike[str], kind: OutputKind,
                      force: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory beside `path`; on success it becomes `path`.

    On any error nothing at `path` has changed and the staging directory is removed.
    """
    out = check_output_dir(path, kind, force)
    created = make_parents(out)
    try:
        staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        remove_empty(created)
        raise _cannot_write(out.parent, out.name, exc) from exc
    try:
        yield staged
        commit_output_dir(staged, out, kind)
        created = []
    finally:
        if staged.exists():
            shutil.rmtree(staged)
        remove_empty(created)


def check_output_file(path: str | os.PathLike[str], force: bool = False) -> Path:
    """Refuse to overwrite an existing file without `force`; prove the folder is writable."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise ConvaError(f"{out}: is a directory; give a file name")
    if out.exists() and not force:
        raise ConvaError(f"{out}: already exists; pass --force to overwrite it")
    _check_writable(out)
    return out
