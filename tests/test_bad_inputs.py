"""The bad-input matrix: every user mistake is one `error:` line, exit 1, and loses nothing.

Each case builds its own files in a fresh folder, runs the real CLI (the click group, in
process), and checks: exit code 1, exactly one line on stderr that starts with `error:`,
the expected words in it, no traceback, and every file that existed before is byte for byte
the same afterwards (and no new file appeared, except where the case says so).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from conva_mlx.cli.main import cli
from conva_mlx.data.dataset import SHIPPED_DATA
from conva_mlx.packs.pack import load_pack
from conva_mlx.sharing.export_gguf import export_gguf

Setup = Callable[["Env"], list[str]]


@dataclass
class Env:
    """What a case may use: its own folder and copies of real inputs."""

    root: Path
    pack_src: Path
    gguf_src: Path

    def pack(self, name: str = "pack") -> Path:
        dst = self.root / name
        if not dst.exists():
            shutil.copytree(self.pack_src, dst)
        return dst

    def edit_pack_json(self, edit: Callable[[dict], None], name: str = "pack") -> Path:
        d = self.pack(name)
        meta = json.loads((d / "pack.json").read_text())
        edit(meta)
        (d / "pack.json").write_text(json.dumps(meta))
        return d

    def gguf(self, folder: str = "models") -> Path:
        (self.root / folder).mkdir(exist_ok=True)
        dst = self.root / folder / self.gguf_src.name
        if not dst.exists():
            shutil.copyfile(self.gguf_src, dst)
        return dst

    def control_vector(self) -> Path:
        path = self.root / "benevolence.gguf"
        if not path.exists():
            pack = load_pack(self.pack_src)
            export_gguf(pack, "benevolence", path, {k: 1.0 for k in pack.values["benevolence"]
                                                    .layers})
        return path


@dataclass
class Case:
    name: str
    setup: Setup
    match: str  # a substring the error line must contain
    new_files_ok: tuple[str, ...] = field(default_factory=tuple)
    cwd: bool = False  # run inside env.root (for `--out .`)


def _set(path: list[str], value: object) -> Callable[[dict], None]:
    def edit(meta: dict) -> None:
        d = meta
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return edit


def _pack_json(path: list[str], value: object, command: str) -> Setup:
    def setup(env: Env) -> list[str]:
        d = env.edit_pack_json(_set(path, value))
        return {"generate": ["generate", "--pack", str(d), "--value", "benevolence", "hi"],
                "generate-nogate": ["generate", "--pack", str(d), "--value", "benevolence",
                                    "--no-gate", "hi"],
                "analyze": ["analyze", "--pack", str(d)],
                "push": ["push", str(d), "me/pack", "--dry-run"],
                "verify": ["pack", "verify", str(d)],
                "export": ["export", "--pack", str(d), "--value", "benevolence", "--format",
                           "gguf", "--scale", "1", "--out", str(env.root / "v.gguf")],
                }[command]
    return setup


def _swap_vectors(env: Env) -> list[str]:
    """Another pack's tensors (same model and values, another gate), with pack.json's
    checksum updated to match them."""
    from conva_mlx.packs.save import save_pack

    a = env.pack("a")
    other = load_pack(env.pack_src)
    assert other.gate is not None
    other.gate.weight = other.gate.weight * 2
    b = save_pack(other, env.root / "b")
    shutil.copyfile(b / "vectors.safetensors", a / "vectors.safetensors")
    meta = json.loads((a / "pack.json").read_text())
    meta["files"]["vectors.safetensors"] = hashlib.sha256(
        (a / "vectors.safetensors").read_bytes()).hexdigest()
    (a / "pack.json").write_text(json.dumps(meta))
    return ["generate", "--pack", str(a), "--value", "benevolence", "hi"]


def _pickle_as_vectors(env: Env) -> list[str]:
    d = env.pack()
    with open(d / "vectors.safetensors", "wb") as f:
        pickle.dump({"weight": [1.0, 2.0]}, f)
    meta = json.loads((d / "pack.json").read_text())
    meta["files"]["vectors.safetensors"] = hashlib.sha256(
        (d / "vectors.safetensors").read_bytes()).hexdigest()
    (d / "pack.json").write_text(json.dumps(meta))
    return ["analyze", "--pack", str(d)]


def _symlink_loop(env: Env) -> list[str]:
    os.symlink(env.root / "loop-b", env.root / "loop-a")
    os.symlink(env.root / "loop-a", env.root / "loop-b")
    return ["analyze", "--pack", str(env.root / "loop-a")]


def _write(env: Env, name: str, data: bytes) -> Path:
    path = env.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _sparse(env: Env, name: str, size: int) -> Path:
    path = env.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _non_utf8_data(env: Env) -> list[str]:
    data = env.root / "data"
    shutil.copytree(SHIPPED_DATA, data)
    f = data / "pairs" / "power.jsonl"
    lines = f.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"I ", b"I \xff\xfe ", 1)
    f.write_bytes(b"".join(lines))
    return ["data", "validate", str(data)]


def _generate(*args: str) -> Setup:
    return lambda e: ["generate", "--pack", str(e.pack()), *args]


def _non_empty_dir(env: Env, *names: str) -> Path:
    d = env.root / "stuff"
    d.mkdir()
    for n in names:
        (d / n).write_text("keep me\n")
    return d


CASES = [
    # --- data loss --------------------------------------------------------------------
    Case("import-gguf into the folder that holds the source GGUF",
         lambda e: ["models", "import-gguf", str(e.gguf()), "--out", str(e.gguf().parent)],
         "does not hold a model directory"),
    Case("import-gguf --out . (a non-empty working directory)",
         lambda e: ["models", "import-gguf", str(e.gguf()), "--out", "."],
         "does not hold a model directory", cwd=True),
    Case("import-gguf --out a non-empty folder even with --force",
         lambda e: ["models", "import-gguf", str(e.gguf()), "--out",
                    str(_non_empty_dir(e, "notes.txt")), "--force"],
         "does not hold a model directory"),
    Case("extract --out an existing pack without --force",
         lambda e: ["extract", "--values", "power", "--out", str(e.pack())],
         "already holds a vector pack; pass --force"),
    Case("extract --out a non-empty folder that is not a pack, even with --force",
         lambda e: ["extract", "--values", "power", "--force", "--out",
                    str(_non_empty_dir(e, "thesis.tex", "data.csv"))],
         "does not hold a vector pack"),
    Case("import-vector --out an existing pack without --force",
         lambda e: ["import-vector", str(e.control_vector()), "--out", str(e.pack())],
         "already holds a vector pack; pass --force"),
    Case("import-vector --out a non-empty folder that is not a pack",
         lambda e: ["import-vector", str(e.control_vector()), "--out",
                    str(_non_empty_dir(e, "a.txt"))],
         "does not hold a vector pack"),
    # --- type-invalid pack.json, in every command that reads packs ----------------------
    *[Case(f"pack.json {label} in {cmd}", _pack_json(path, value, cmd), match)
      for cmd in ("generate", "analyze", "push")
      for label, path, value, match in (
          ("format_version '1'", ["format_version"], "1", "'format_version' must be an integer"),
          ("values as a list", ["values"], ["benevolence"], "'values' must be a JSON object"),
          ("files null", ["files"], None, "no checksum for vectors.safetensors"),
          ("default_p0 'abc'", ["values", "benevolence", "default_p0"], "abc",
           "'default_p0' must be a finite number"),
          ("layers out of range", ["values", "benevolence", "layers"], [3, 99],
           "block(s) [99] outside 0-29"),
          ("gate layer out of range", ["gate", "layer"], 30, "'layer' must be an integer in"),
          ("hidden_size a string", ["model", "hidden_size"], "576",
           "'hidden_size' must be an integer"),
      )],
    # --- values and recipes that steering cannot use: refused by verify and every loader --
    *[Case(f"pack.json {label} in {cmd}", _pack_json(path, value, cmd), match)
      for cmd in ("verify", "generate", "analyze", "export")
      for label, path, value, match in (
          ("layers empty", ["values", "benevolence", "layers"], [], "'layers' is empty"),
          ("default_p0 0.3", ["values", "benevolence", "default_p0"], 0.3,
           "'default_p0' must be in [0.5, 1), got 0.3"),
          ("default_p0 1", ["values", "benevolence", "default_p0"], 1,
           "'default_p0' must be in [0.5, 1), got 1"),
          ("default_p0 0", ["values", "benevolence", "default_p0"], 0,
           "'default_p0' must be in [0.5, 1), got 0"),
          ("default_p0 true", ["values", "benevolence", "default_p0"], True,
           "'default_p0' must be a finite number"),
          ("layers a duplicate block", ["values", "benevolence", "layers"], [3, 3],
           "lists a block twice"),
          ("recipe default_p0 NaN", ["recipe", "default_p0"], float("nan"),
           "default_p0 must be in [0.5, 1), got nan"),
          ("recipe p0 of a value 2", ["recipe", "p0"], {"power": 2},
           "p0 of power must be in [0.5, 1), got 2"),
          ("recipe block reversed", ["recipe", "block"], [0.8, 0.3],
           "must be two numbers with 0 <= start < end <= 1"),
          ("recipe block a string", ["recipe", "block"], "middle",
           "must be two numbers"),
          ("recipe fit unknown", ["recipe", "fit"], "magic", "unknown fit 'magic'"),
          ("recipe c negative", ["recipe", "c"], -1, "c must be a positive number"),
          ("recipe p0 a list", ["recipe", "p0_negative"], [0.9], "p0_negative must map"),
      )],
    Case("pack.json layers out of range with --no-gate",
         _pack_json(["values", "benevolence", "layers"], [-1], "generate-nogate"),
         "outside 0-29"),
    Case("pack.json of 20 MB (sparse)",
         lambda e: ["generate", "--pack", str(_sparse(e, "p/pack.json", 20 << 20).parent),
                    "hi"], "a pack.json is at most"),
    Case("pack.json nested 100000 deep",
         lambda e: ["analyze", "--pack", str(_write(e, "p/pack.json",
                                                    b"[" * 100000 + b"]" * 100000).parent)],
         "nested too deeply"),
    Case("pack.json that is not JSON",
         lambda e: ["analyze", "--pack", str(_write(e, "p/pack.json", b"{\"a\": ").parent)],
         "not valid JSON (Expecting value at line 1, column 7)"),
    # --- generate options -------------------------------------------------------------
    *[Case(name, _generate(*args), match) for name, args, match in (
        ("generate --max-tokens 0", ["--max-tokens", "0", "hi"], "max tokens must be at least 1"),
        ("generate --temp -1", ["--temp", "-1", "hi"], "temperature must be >= 0"),
        ("generate --value V --away V", ["--value", "power", "--away", "power", "hi"],
         "both toward and away from power"),
        ("generate with an empty prompt", ["   "], "the prompt is empty"),
        ("generate with a non-UTF-8 prompt", ["caf\udce9 au lait"], "not valid UTF-8"),
        ("generate with a prompt longer than the model's context",
         ["--value", "benevolence", "word " * 9000],
         "longer than the model's context of 8192 tokens"),
        ("generate with an unknown value", ["--value", "kindness", "hi"],
         "unknown value 'kindness'"),
        ("generate with P0 out of range", ["--value", "power:1.5", "hi"],
         "strength P0 must be in [0.5, 1)"),
    )],
    Case("generate with a missing pack",
         lambda e: ["generate", "--pack", str(e.root / "nope"), "hi"],
         "no such pack directory"),
    # --- files that are not what they claim -------------------------------------------
    Case("eval --prompts with non-UTF-8 bytes",
         lambda e: ["eval", "--pack", str(e.pack()), "--out", str(e.root / "run"),
                    "--prompts", str(_write(e, "p.jsonl",
                                            b'{"value": "power", "prompt": "ok"}\n'
                                            b'{"value": "power", "prompt": "\xe9"}\n'))],
         "p.jsonl:2: not valid UTF-8"),
    Case("import-vector of a truncated GGUF",
         lambda e: ["import-vector", str(_write(e, "cut.gguf",
                                                e.control_vector().read_bytes()[:3000])),
                    "--out", str(e.root / "iv")],
         "truncated"),
    Case("a pickle renamed to vectors.safetensors", _pickle_as_vectors,
         "not a safetensors file"),
    Case("vectors from another pack with an updated checksum", _swap_vectors,
         "these tensors belong to another pack"),
    Case("a checksum that does not match",
         lambda e: ["analyze", "--pack", str(e.edit_pack_json(
             _set(["files", "vectors.safetensors"], "0" * 64)))],
         "checksum does not match"),
    Case("a symbolic link loop as the pack", _symlink_loop, "symbolic link loop"),
    Case("import-gguf of a file that is not GGUF",
         lambda e: ["models", "import-gguf", str(_write(e, "x.gguf", b"PK\x03\x04 zip")),
                    "--out", str(e.root / "m")],
         "not a GGUF file"),
    # --- output paths -----------------------------------------------------------------
    Case("import-gguf --out /proc/x",
         lambda e: ["models", "import-gguf", str(e.gguf()), "--out", "/proc/x/model"],
         "cannot write here"),
    Case("import-gguf --out an existing file",
         lambda e: ["models", "import-gguf", str(e.gguf()), "--out",
                    str(_write(e, "notes.txt", b"mine"))],
         "exists and is not a directory"),
    Case("export --out /proc/x",
         lambda e: ["export", "--pack", str(e.pack()), "--value", "benevolence",
                    "--format", "safetensors", "--out", "/proc/x/v.safetensors"],
         "cannot write here"),
    Case("export --format all --out an existing file",
         lambda e: ["export", "--pack", str(e.pack()), "--value", "benevolence",
                    "--out", str(_write(e, "notes.txt", b"mine"))],
         "exists and is not a directory"),
    Case("export over an existing file without --force",
         lambda e: ["export", "--pack", str(e.pack()), "--value", "benevolence", "--format",
                    "safetensors", "--out", str(_write(e, "model.safetensors", b"weights"))],
         "already exists; pass --force"),
    *[Case(f"analyze --out {label} without --force",
           lambda e, name=name: ["analyze", "--pack", str(e.pack()), "--out",
                                 str(_write(e, name, b"mine"))],
           "already exists; pass --force")
      for label, name in (("an existing text file", "notes.txt"),
                          ("an existing PNG", "plot.png"),
                          ("a file in an existing folder", "out/similarity.png"))],
    Case("analyze --out an existing folder that holds similarity.png",
         lambda e: ["analyze", "--pack", str(e.pack()), "--out",
                    str(_write(e, "figs/similarity.png", b"mine").parent)],
         "similarity.png: already exists; pass --force"),
    Case("analyze --out below a file",
         lambda e: ["analyze", "--pack", str(e.pack()), "--out",
                    str(_write(e, "notes.txt", b"mine") / "x.png")],
         "cannot write here"),
    *[Case(f"export --scale {scale} (into a new folder)",
           lambda e, scale=scale: ["export", "--pack", str(e.pack()), "--value", "benevolence",
                                   "--scale", scale, "--out", str(e.root / "new" / "dir")],
           f"--scale must be a positive finite number, got {want}")
      for scale, want in (("nan", "nan"), ("inf", "inf"), ("-1", "-1.0"), ("0", "0.0"))],
    *[Case(f"export --p0 {p0}",
           lambda e, p0=p0: ["export", "--pack", str(e.pack()), "--value", "benevolence",
                             "--format", "gguf", "--scale", "1", "--p0", p0, "--out",
                             str(e.root / "new" / "v.gguf")],
           "--p0 must be in [0.5, 1)")
      for p0 in ("0.3", "1", "nan")],
    Case("export a value that steers only block 0",
         lambda e: ["export", "--pack", str(e.edit_pack_json(
             _set(["values", "benevolence", "layers"], [0]))), "--value", "benevolence",
                    "--format", "gguf", "--scale", "1", "--out", str(e.root / "new" / "v.gguf")],
         "no steered block to export (only block 0, which llama.cpp cannot take)"),
    Case("generate --seed -1", _generate("--value", "benevolence", "--temp", "0.5", "--seed",
                                         "-1", "hi"), "seed must be in [0, 2^64), got -1"),
    Case("eval --prompts with a line cut off at column 12",
         lambda e: ["eval", "--pack", str(e.pack()), "--out", str(e.root / "run"),
                    "--prompts", str(_write(e, "p.jsonl",
                                            b'{"value": "power", "prompt": "ok"}\n'
                                            b'{"value": 1\n'))],
         "p.jsonl:2: not valid JSON (Expecting ',' delimiter at column 12)"),
    Case("eval --prompts with one 1 MB line",
         lambda e: ["eval", "--pack", str(e.pack()), "--out", str(e.root / "run"),
                    "--prompts", str(_write(e, "p.jsonl", b'{"value": "power", "prompt": "'
                                            + b"x" * 1_000_000 + b'"}\n'))],
         "p.jsonl:1: line is longer than 256 KiB"),
    Case("eval --prompts that is a 100 MB file (sparse)",
         lambda e: ["eval", "--pack", str(e.pack()), "--out", str(e.root / "run"),
                    "--prompts", str(_sparse(e, "p.jsonl", 100 << 20))],
         "p.jsonl: is 100.0 MiB; JSONL files are read up to 64.0 MiB"),
    *[Case(f"eval --strength {s}",
           lambda e, s=s: ["eval", "--pack", str(e.pack()), "--out", str(e.root / "run"),
                           "--methods", "ica+calibrated", "--strength", s],
           "--strength must be in (0, 8] (1 = the calibrated push)")
      for s in ("0", "-1", "nan", "9")],
    Case("eval --repetition-penalty 3",
         lambda e: ["eval", "--pack", str(e.pack()), "--out", str(e.root / "run"),
                    "--repetition-penalty", "3"],
         "repetition penalty must be in [1, 2] (1 = off), got 3.0"),
    Case("eval --out a folder of the user's that is not an evaluation run",
         lambda e: ["eval", "--pack", str(e.pack()), "--values", "power", "--out",
                    str(_non_empty_dir(e, "results.json", "notes.md"))],
         "is not empty and does not hold a conva-mlx eval run"),
    Case("data generate against a server that is down",
         lambda e: ["data", "generate", "--value", "power", "--n", "2", "--out",
                    str(e.root / "gen" / "power.jsonl"), "--base-url",
                    "http://127.0.0.1:9/v1", "--api-key-env", "none", "--max-retries", "0"],
         "cannot reach the server"),
]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file (by content), link and folder under `root`: an empty folder left
    behind by a failed command counts as a change too."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            out[rel] = (f"link:{os.readlink(p)}" if p.is_symlink() else "folder" if p.is_dir()
                        else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def env_sources(small_pack_dir: Path, default_gguf: Path) -> tuple[Path, Path]:
    return small_pack_dir, default_gguf


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_error_and_loses_nothing(
        case: Case, tmp_path: Path, env_sources: tuple[Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    env = Env(tmp_path, *env_sources)
    args = case.setup(env)
    before = _snapshot(tmp_path)
    if case.cwd:
        monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    error_lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    assert case.match in error_lines[0], error_lines[0]
    assert "Traceback" not in result.output
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "a file changed"
    assert set(after) - set(before) <= set(case.new_files_ok), "a file appeared"


def test_data_validate_reports_non_utf8_bytes_with_file_and_line(
        tmp_path: Path, env_sources: tuple[Path, Path]) -> None:
    env = Env(tmp_path, *env_sources)
    result = CliRunner().invoke(cli, _non_utf8_data(env))
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "pairs/power.jsonl:3: not valid UTF-8 (byte 0xff" in result.stdout
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].endswith(f"error(s) in {tmp_path / 'data'}")
    assert "Traceback" not in result.output


# ----- the good paths next to them --------------------------------------------------------


def test_force_replaces_a_pack_and_keeps_files_that_are_not_part_of_it(
        tmp_path: Path, env_sources: tuple[Path, Path]) -> None:
    from conva_mlx.packs.save import save_pack

    env = Env(tmp_path, *env_sources)
    d = env.pack()
    (d / "my-notes.md").write_text("mine")
    (d / "similarity.png").write_bytes(b"old plot")  # a pack file the new pack does not have
    old_id = json.loads((d / "pack.json").read_text()).get("pack_id")
    pack = load_pack(env.pack_src)
    one_value = type(pack)(pack.model, {"power": pack.values["power"]}, pack.gate,
                           pack.dataset_hash)
    save_pack(one_value, d, overwrite=True)
    back = load_pack(d)
    assert list(back.values) == ["power"]
    assert (d / "my-notes.md").read_text() == "mine"
    assert not (d / "similarity.png").exists()
    assert json.loads((d / "pack.json").read_text())["pack_id"] != old_id
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging left over"


def test_import_gguf_force_replaces_a_model_directory_and_keeps_other_files(
        tmp_path: Path, env_sources: tuple[Path, Path]) -> None:
    env = Env(tmp_path, *env_sources)
    out = tmp_path / "model"
    runner = CliRunner()
    assert runner.invoke(cli, ["models", "import-gguf", str(env.gguf()), "--out",
                               str(out)]).exit_code == 0
    (out / "README.md").write_text("my notes")
    before = (out / "model.safetensors").stat().st_mtime_ns
    refused = runner.invoke(cli, ["models", "import-gguf", str(env.gguf()), "--out", str(out)])
    assert refused.exit_code == 1 and "pass --force" in refused.stderr
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    again = runner.invoke(cli, ["models", "import-gguf", str(env.gguf()), "--out", str(out),
                                "--force"])
    assert again.exit_code == 0, again.output
    assert (out / "README.md").read_text() == "my notes"
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()


def test_pack_verify_record_binds_an_unbound_pack(
        tmp_path: Path, env_sources: tuple[Path, Path]) -> None:
    env = Env(tmp_path, *env_sources)
    d = env.edit_pack_json(lambda m: (m.pop("pack_id", None), m.pop("files", None)))
    runner = CliRunner()
    refused = runner.invoke(cli, ["analyze", "--pack", str(d)])
    assert refused.exit_code == 1 and "pack verify --record" in refused.stderr
    recorded = runner.invoke(cli, ["pack", "verify", "--record", str(d)])
    assert recorded.exit_code == 0, recorded.output
    assert "recorded pack id" in recorded.stdout
    ok = runner.invoke(cli, ["pack", "verify", str(d)])
    assert ok.exit_code == 0 and ok.stdout.startswith("ok:")
    assert "warning" not in ok.stderr


def test_a_pack_without_a_pack_id_loads_with_one_warning(
        tmp_path: Path, env_sources: tuple[Path, Path]) -> None:
    env = Env(tmp_path, *env_sources)
    d = env.edit_pack_json(lambda m: m.pop("pack_id", None))
    with pytest.warns(UserWarning, match="no pack_id"):
        load_pack(d)


def test_eval_values_follow_the_prompts_file(tmp_path: Path) -> None:
    from conva_mlx.errors import ConvaError
    from conva_mlx.evaluation.items import prompt_file_values

    f = tmp_path / "p.jsonl"
    f.write_text('{"value": "power", "prompt": "a"}\n{"value": "benevolence", "prompt": "b"}\n'
                 '{"value": "power", "prompt": "c"}\n')
    assert prompt_file_values(f) == ["power", "benevolence"]
    f.write_text('{"value": "kindness", "prompt": "a"}\n')
    with pytest.raises(ConvaError, match="unknown value 'kindness'"):
        prompt_file_values(f)


def test_the_installed_command_refuses_raw_non_utf8_argv_bytes(small_pack_dir: Path) -> None:
    """The real entry point (console script, OpenBLAS re-exec), with bytes from a shell."""
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "conva-mlx"
    proc = subprocess.run([str(exe), "generate", "--pack", str(small_pack_dir),
                           b"caf\xe9 au lait"], capture_output=True, text=True,
                          env={**os.environ, "LC_ALL": "C.UTF-8"})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: the prompt is not valid UTF-8 text (character 4); check your terminal's "
        "encoding"]


# ----- round two: the process, read-only packs, readers, reports ----------------------------


def _read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `folder` refuse new files: by its mode, and (root ignores modes) by refusing
    temporary files there the way the kernel would."""
    import tempfile

    folder.chmod(0o555)
    if os.geteuid() != 0:
        return
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args: object, **kwargs: object) -> tuple[int, str]:
        if Path(str(kwargs.get("dir", ""))).resolve() == folder.resolve():
            raise PermissionError(13, "Permission denied", str(folder / ".x.tmp"))
        return real_mkstemp(*args, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("command", ["analyze", "verify --record"])
def test_a_read_only_pack_names_its_folder_and_what_to_do(
        command: str, tmp_path: Path, env_sources: tuple[Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    env = Env(tmp_path, *env_sources)
    if command == "analyze":
        d = env.pack()
        args, match = ["analyze", "--pack", str(d)], "pass --out FILE.png"
    else:
        d = env.edit_pack_json(lambda m: m.pop("pack_id", None))
        args, match = ["pack", "verify", "--record", str(d)], "make it writable"
    before = _snapshot(tmp_path)
    _read_only(d, monkeypatch)
    try:
        result = CliRunner().invoke(cli, args)
    finally:
        d.chmod(0o755)
    assert result.exit_code == 1, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(d) in errors[0] and match in errors[0], result.stderr
    assert ".tmp" not in result.output and "Traceback" not in result.output
    assert _snapshot(tmp_path) == before


def test_analyze_out_a_folder_writes_similarity_png_there_and_force_replaces(
        tmp_path: Path) -> None:
    from conva_mlx.packs.save import save_pack
    from tests.test_analysis import circumplex_pack

    d = save_pack(circumplex_pack(), tmp_path / "p")
    figs = tmp_path / "figs"
    figs.mkdir()
    runner = CliRunner()
    ok = runner.invoke(cli, ["analyze", "--pack", str(d), "--out", str(figs)])
    assert ok.exit_code == 0, ok.output
    png = (figs / "similarity.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    mine = _write(Env(tmp_path, d, d), "mine.png", b"mine")
    assert runner.invoke(cli, ["analyze", "--pack", str(d), "--out", str(mine)]).exit_code == 1
    assert mine.read_bytes() == b"mine"
    forced = runner.invoke(cli, ["analyze", "--pack", str(d), "--out", str(mine), "--force"])
    assert forced.exit_code == 0 and mine.read_bytes().startswith(b"\x89PNG")
    again = runner.invoke(cli, ["analyze", "--pack", str(d)])  # the pack's own plot
    assert again.exit_code == 0 and (d / "similarity.png").is_file()


def test_export_into_new_folders_creates_them_only_on_success(
        tmp_path: Path, env_sources: tuple[Path, Path]) -> None:
    env = Env(tmp_path, *env_sources)
    out = tmp_path / "a" / "b" / "benevolence.gguf"
    result = CliRunner().invoke(cli, ["export", "--pack", str(env.pack()), "--value",
                                      "benevolence", "--format", "gguf", "--scale", "2",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_data_validate_bounds_a_huge_line_and_reports_real_columns(tmp_path: Path) -> None:
    import time

    data = tmp_path / "data"
    shutil.copytree(SHIPPED_DATA, data, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    f = data / "pairs" / "power.jsonl"
    lines = f.read_bytes().splitlines(keepends=True)
    lines[0] = b'{"id": "' + b"x" * 50_000_000 + b'"}\n'  # one 50 MB line
    lines[1] = b'{"id": 1\n'  # cut off at column 9
    record = json.loads(lines[2])
    record["positive"] = "power " * 1000  # a text far longer than a sentence
    lines[2] = json.dumps(record).encode() + b"\n"
    f.write_bytes(b"".join(lines))
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["data", "validate", str(data), "--limit", "0"])
    assert time.perf_counter() - start < 30
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "pairs/power.jsonl:1: line is longer than 256 KiB" in result.stdout
    assert "pairs/power.jsonl:2: not valid JSON (Expecting ',' delimiter at column 9)" \
        in result.stdout
    assert "pairs/power.jsonl:3: field(s) positive longer than 2000 characters" in result.stdout


def test_bounded_lines_keeps_short_lines_and_marks_long_ones() -> None:
    import io

    from conva_mlx.data.dataset import bounded_lines

    raw = b"ab\n" + b"x" * 25 + b"\ncd\n" + b"y" * 10 + b"\n" + b"z" * 11
    assert list(bounded_lines(io.BytesIO(raw), limit=10)) == [
        b"ab\n", None, b"cd\n", b"y" * 10 + b"\n", None]


@pytest.mark.parametrize("closed", ["<&-", "<&- >&-", "<&- 2>&-"])
def test_closed_standard_streams_do_not_break_generation(
        closed: str, tmp_path: Path, env_sources: tuple[Path, Path]) -> None:
    """`conva-mlx generate ... <&-`: the real entry point with closed descriptors."""
    import shlex
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "conva-mlx"
    done = tmp_path / "rc"
    cmd = (f"{shlex.quote(str(exe))} generate --pack {shlex.quote(str(env_sources[0]))} "
           f"--value benevolence --no-gate --max-tokens 3 hello {closed}; echo $? > {done}")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert done.read_text().strip() == "0", proc.stderr
    assert "Traceback" not in proc.stderr and "error:" not in proc.stderr
    if ">&-" not in closed:
        assert proc.stdout.strip()


def test_the_summary_averages_each_value_over_its_own_blocks(
        tmp_path: Path, env_sources: tuple[Path, Path]) -> None:
    from conva_mlx.steering.config import Target
    from conva_mlx.steering.reports import GateReport, GenerationResult, LayerReport

    reports = [LayerReport(3, {"power": 0.2}, {"power": 0.9}, 1.0),
               LayerReport(5, {"power": 0.4, "benevolence": 0.5},
                           {"power": 1.0, "benevolence": 0.95}, 2.0),
               LayerReport(7, {"benevolence": 0.3}, {"benevolence": 0.97}, 1.0)]
    result = GenerationResult("", [], GateReport(None, True, None, False), reports, "conva",
                              "prompt", [Target("power"), Target("benevolence")])
    assert result.summary().endswith("power↑ P 0.30→0.95, benevolence↑ P 0.40→0.96")
    env = Env(tmp_path, *env_sources)
    cli_run = CliRunner().invoke(cli, ["generate", "--pack", str(env.pack()), "--value",
                                       "benevolence", "--value", "power", "--no-gate",
                                       "--method", "conva", "--max-tokens", "2",
                                       "Should I help my friend?"])
    assert cli_run.exit_code == 0, cli_run.output
    summary = cli_run.stderr.strip().splitlines()[-1]
    assert "benevolence↑ P" in summary and "power↑ P" in summary and "nan" not in summary
