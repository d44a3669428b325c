"""Evaluation runner: control success (CSR), fluency (FR), general ability, with resume.

Stages, each resumable (records are appended with flush + fsync; a rerun skips what is done):
1. generations  -> DIR/generations.jsonl, keyed by (method, value, prompt id, negative flag)
2. judgements   -> DIR/judgements.jsonl, keyed by the generation key and the judge's name
3. general ability (MCQs; none / conva-nogate / conva) -> DIR/mcq.jsonl
4. metrics      -> DIR/results.json, DIR/results.md, DIR/csr.png
                   (with --negative-prompt: results-neg.json, results-neg.md, csr-neg.png)
Test prompts: the even-numbered ("test") half of each value's dilemmas (the gate threshold
was calibrated on the odd half), or a JSONL file of {"value", "prompt"[, "id"]} records.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import mlx.core as mx
import numpy as np

from conva_mlx.data.dataset import ValueData, read_jsonl
from conva_mlx.errors import ConvaError
from conva_mlx.evaluation.judges import Judge
from conva_mlx.evaluation.store import JsonlStore, saved_settings
from conva_mlx.fsutil import (
    OutputKind,
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    sha256_file,
)
from conva_mlx.packs.pack import Pack
from conva_mlx.probes.gate import dilemma_split
from conva_mlx.probes.recipe import Direction
from conva_mlx.progress import progress_bar
from conva_mlx.steering import GenOptions, SteerConfig, SteeringSession, Target
from conva_mlx.steering.config import Mode, Positions
from conva_mlx.values import check_value

# Evaluation method name -> SteerConfig settings.
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "none": {"method": "none"},
    "ica": {"method": "ica"},
    "calibrated": {"method": "calibrated", "gate": True},
    "caa": {"method": "caa"},
    "conva": {"method": "conva", "gate": True},
    "conva-nogate": {"method": "conva", "gate": False},
    "conva-uncontrolled": {"method": "conva", "gate": True, "probes": "uncontrolled"},
}
EVAL_METHODS: tuple[str, ...] = tuple(METHOD_SETTINGS)
GENERAL_METHODS: tuple[str, ...] = ("none", "conva-nogate", "conva", "calibrated")
ANSWER_CUE = "Answer:"
T = TypeVar("T")


Split = Literal["test", "calibration"]


def steer_config(method: str, value: str, negative_prompt: bool = False,
                 p0: float | None = None, caa_coef: float = 1.0, mode: Mode | None = None,
                 direction: Direction | None = None, positions: Positions | None = None
                 ) -> SteerConfig:
    """Settings of one evaluation method; p0 None = the pack's default for the value.
    `mode` and `direction` apply to the ConVA methods (None = prompt mode, the pack's
    recipe direction)."""
    if method not in METHOD_SETTINGS:
        raise ConvaError(f"unknown method '{method}' (choose from {', '.join(EVAL_METHODS)})")
    settings = dict(METHOD_SETTINGS[method])
    if settings["method"] == "conva":
        settings.update(mode=mode or "prompt", direction=direction,
                        positions=positions or "all")
    return SteerConfig(targets=[Target(value, p0)], negative_prompt=negative_prompt,
                       caa_coef=caa_coef, **settings)


def parse_methods(spec: str) -> list[str]:
    methods = [m.strip() for m in spec.split(",") if m.strip()]
    for m in methods:
        if m not in METHOD_SETTINGS:
            raise ConvaError(f"unknown method '{m}' (choose from {', '.join(EVAL_METHODS)})")
    if not methods:
        raise ConvaError("choose at least one method")
    return list(dict.fromkeys(methods))


def method_label(method: str, negative_prompt: bool) -> str:
    return f"{method}+neg" if negative_prompt else method


@dataclass(frozen=True)
class EvalItem:
    value: str
    prompt_id: str
    prompt: str


def prompt_file_values(prompts_file: Path) -> list[str]:
    """The values a --prompts file names, in order of first use."""
    seen: dict[str, None] = {}
    for lineno, r in read_jsonl(Path(prompts_file)):
        if not r.get("value"):
            raise ConvaError(f"{prompts_file}:{lineno}: needs 'value' and 'prompt'")
        seen[check_value(str(r["value"]))] = None
    if not seen:
        raise ConvaError(f"{prompts_file}: no prompts")
    return list(seen)


def load_items(values: list[str], n: int | None = None, prompts_file: Path | None = None,
               data: ValueData | None = None, split: Split = "test") -> list[EvalItem]:
    """Held-out prompts per value (at most n each): the test (even) half of the dilemmas,
    or the calibration (odd) half to tune strengths and recipes on."""
    items: list[EvalItem] = []
    if prompts_file is not None:
        per: dict[str, int] = {}
        for lineno, r in read_jsonl(Path(prompts_file)):
            if not r.get("value") or not r.get("prompt"):
                raise ConvaError(f"{prompts_file}:{lineno}: needs 'value' and 'prompt'")
            v = str(r["value"])
            check_value(v)
            if v not in values or (n is not None and per.get(v, 0) >= n):
                continue
            per[v] = per.get(v, 0) + 1
            items.append(EvalItem(v, str(r.get("id") or f"line-{lineno}"), str(r["prompt"])))
        if not items:
            raise ConvaError(f"{prompts_file}: no prompts for the chosen values")
        return items
    data = data or ValueData()
    for v in values:
        ds = data.dilemmas(v)
        calib, test = dilemma_split([d.id for d in ds])
        half = calib if split == "calibration" else test
        chosen = [ds[i] for i in half][: n if n is not None else None]
        items += [EvalItem(v, d.id, d.prompt) for d in chosen]
    return items


def gen_key(method: str, value: str, prompt_id: str, negative_prompt: bool) -> str:
    return json.dumps([method, value, prompt_id, bool(negative_prompt)])


@dataclass
class EvalOptions:
    values: list[str]
    methods: list[str] = field(default_factory=lambda: list(EVAL_METHODS))
    negative_prompt: bool = False
    n: int | None = None
    prompts_file: Path | None = None
    max_tokens: int = 64
    p0: float | None = None  # ConVA strength for every value; None = the pack's defaults
    caa_coef: float = 1.0  # CAA strength (multiplies the mean-difference vectors)
    batch_size: int = 16  # prompts decoded together (1 = one at a time)
    temp: float = 0.0
    seed: int | None = None
    general: bool = True
    mcq_n: int | None = None
    show_progress: bool = True
    split: Split = "test"
    mode: Mode | None = None  # ConVA's mode; None = prompt
    direction: Direction | None = None  # ConVA's delta direction; None = the pack's recipe
    positions: Positions | None = None  # prompt mode: where the delta goes; None = all

    def conva_p0(self, pack: Pack, value: str) -> float | None:
        """--p0 if given; under the negative prompt, the recipe's P0 for that setting."""
        if self.p0 is not None:
            return self.p0
        if self.negative_prompt and pack.recipe.p0_negative:
            return pack.recipe.p0_for(value, negative_prompt=True)
        return None

    def config(self, method: str, value: str, pack: Pack) -> SteerConfig:
        return steer_config(method, value, self.negative_prompt, self.conva_p0(pack, value),
                            self.caa_coef, self.mode, self.direction, self.positions)


@dataclass
class EvalContext:
    session: SteeringSession
    out: Path
    judge_factory: Callable[[], Judge]
    pack_path: Path | None = None
    data: ValueData = field(default_factory=ValueData)
    on_generation: Callable[[int], None] | None = None  # called after each saved generation

    @property
    def pack(self) -> Pack:
        if self.session.pack is None:
            raise ConvaError("eval needs a pack")
        return self.session.pack


def _batches(keyed: list[tuple[tuple[str, str], T]], size: int
             ) -> list[tuple[tuple[str, str], list[T]]]:
    """Group items by (method, value), keeping order, and cut each group into batches."""
    groups: dict[tuple[str, str], list[T]] = {}
    for key, item in keyed:
        groups.setdefault(key, []).append(item)
    return [(key, items[i:i + size]) for key, items in groups.items()
            for i in range(0, len(items), size)]


def _generate_all(ctx: EvalContext, opts: EvalOptions, items: list[EvalItem]) -> JsonlStore:
    """Generate what is missing, a batch of prompts (same method and value) at a time."""
    store = JsonlStore(ctx.out / "generations.jsonl")
    todo = [(m, it) for m in opts.methods for it in items
            if gen_key(m, it.value, it.prompt_id, opts.negative_prompt) not in store]
    batches = _batches([((m, it.value), it) for m, it in todo], opts.batch_size)
    gen = GenOptions(max_tokens=opts.max_tokens, temp=opts.temp, seed=opts.seed)
    done = 0
    with progress_bar(len(todo), "generate", opts.show_progress) as advance:
        for (method, value), chunk in batches:
            cfg = opts.config(method, value, ctx.pack)
            results = ctx.session.generate_batch([it.prompt for it in chunk], cfg, gen)
            for it, r in zip(chunk, results):
                store.append({
                    "key": gen_key(method, it.value, it.prompt_id, opts.negative_prompt),
                    "method": method, "value": it.value, "prompt_id": it.prompt_id,
                    "negative_prompt": opts.negative_prompt, "prompt": it.prompt,
                    "text": r.text, "generated_tokens": len(r.tokens),
                    "gate": {"used": r.gate.used, "open": r.gate.open, "score": r.gate.score},
                    "steered": r.steered,
                    "delta_norm_mean": round(float(np.mean([x.delta_norm for x in r.layers]))
                                             if r.layers else 0.0, 4),
                    "seconds": round(r.seconds, 3)})
                done += 1
                if ctx.on_generation is not None:
                    ctx.on_generation(done)
            advance(len(chunk))
    return store


def _judge_all(ctx: EvalContext, opts: EvalOptions, items: list[EvalItem], gens: JsonlStore,
               judge: Judge) -> JsonlStore:
    store = JsonlStore(ctx.out / "judgements.jsonl")
    keys = [gen_key(m, it.value, it.prompt_id, opts.negative_prompt)
            for m in opts.methods for it in items]
    todo = [k for k in keys if json.dumps([judge.name, k]) not in store]
    step = opts.batch_size
    with progress_bar(len(todo), "judge", opts.show_progress) as advance:
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            triples = [(gens.records[k]["value"], gens.records[k]["prompt"],
                        gens.records[k]["text"]) for k in chunk]
            verdicts = judge.judge_batch(triples)
            for k, j in zip(chunk, verdicts):
                store.append({"key": json.dumps([judge.name, k]), "judge": judge.name,
                              "generation": k, **j.as_dict()})
            advance(len(chunk))
    return store


def mcq_letter_ids(tokenizer: Any) -> dict[str, list[int]]:
    """Single-token ids for ' A' and 'A' (etc.), whichever exist."""
    out: dict[str, list[int]] = {}
    for letter in "ABCD":
        ids = []
        for form in (f" {letter}", letter):
            enc = tokenizer.encode(form, add_special_tokens=False)
            if len(enc) == 1:
                ids.append(int(enc[0]))
        if not ids:
            raise ConvaError(f"the tokenizer has no single token for option {letter}")
        out[letter] = ids
    return out


def mcq_answer(logits: mx.array, letter_ids: dict[str, list[int]]) -> str:
    lg = np.array(logits.astype(mx.float32))
    scores = {k: max(float(lg[i]) for i in ids) for k, ids in letter_ids.items()}
    return max(scores, key=lambda k: scores[k])


def _general_ability(ctx: EvalContext, opts: EvalOptions) -> dict[str, Any]:
    """MCQ accuracy per method; steered methods target the chosen values in turn."""
    methods = [m for m in GENERAL_METHODS if m in opts.methods]
    if not methods:
        return {}
    mcqs = ctx.data.mcqs()[: opts.mcq_n]
    store = JsonlStore(ctx.out / "mcq.jsonl")
    letters = mcq_letter_ids(ctx.session.lm.tokenizer)
    todo = []
    for m in methods:
        for i, q in enumerate(mcqs):
            value = opts.values[i % len(opts.values)]
            key = json.dumps(["mcq", m, q.id, value])
            if key not in store:
                todo.append((key, m, q, value))
    batches = _batches([((m, value), (key, q)) for key, m, q, value in todo], opts.batch_size)
    with progress_bar(len(todo), "general ability", opts.show_progress) as advance:
        for (m, value), chunk in batches:
            scored = ctx.session.next_token_logits_batch(
                [q.as_prompt() for _, q in chunk],
                steer_config(m, value, p0=opts.p0, mode=opts.mode, direction=opts.direction,
                             positions=opts.positions),
                ANSWER_CUE)
            for (key, q), (logits, gate) in zip(chunk, scored):
                pred = mcq_answer(logits, letters)
                store.append({"key": key, "method": m, "mcq": q.id, "value": value,
                              "pred": pred, "answer": q.answer, "correct": pred == q.answer,
                              "gate_open": gate.open if gate.used else None})
            advance(len(chunk))
    out: dict[str, Any] = {}
    for m in methods:
        recs = [store.records[json.dumps(["mcq", m, q.id, opts.values[i % len(opts.values)]])]
                for i, q in enumerate(mcqs)]
        gates = [r["gate_open"] for r in recs if r["gate_open"] is not None]
        out[m] = {"accuracy": float(np.mean([r["correct"] for r in recs])) if recs else None,
                  "n": len(recs),
                  "gate_open_rate": float(np.mean(gates)) if gates else None}
    return out


def _rate(xs: list[bool | None]) -> tuple[float | None, int]:
    parsed = [x for x in xs if x is not None]
    return (float(np.mean(parsed)) if parsed else None), len(xs) - len(parsed)


def compute_metrics(opts: EvalOptions, items: list[EvalItem], gens: JsonlStore,
                    judgements: JsonlStore, judge_name: str) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for v in dict.fromkeys(it.value for it in items):
        row: dict[str, Any] = {}
        for m in opts.methods:
            ks = [gen_key(m, it.value, it.prompt_id, opts.negative_prompt)
                  for it in items if it.value == v]
            js = [judgements.records[json.dumps([judge_name, k])] for k in ks]
            csr, bad_v = _rate([j["value"] for j in js])
            fr, bad_f = _rate([j["fluent"] for j in js])
            gates = [gens.records[k]["gate"] for k in ks]
            used = [g["open"] for g in gates if g["used"]]
            norms = [float(gens.records[k]["delta_norm_mean"]) for k in ks
                     if gens.records[k].get("delta_norm_mean") is not None]
            # How often the reply differs at all from the plain model's reply to the same
            # prompt (same negative-prompt flag; None when `none` was not run that way).
            plain = [gens.records.get(gen_key("none", it.value, it.prompt_id,
                                              opts.negative_prompt))
                     for it in items if it.value == v]
            changed = [gens.records[k]["text"] != p["text"] for k, p in zip(ks, plain)
                       if p is not None]
            row[method_label(m, opts.negative_prompt)] = {
                "csr": csr, "fr": fr, "n": len(ks), "value_unparseable": bad_v,
                "fluency_unparseable": bad_f,
                "gate_open_rate": float(np.mean(used)) if used else None,
                "changed_vs_none": float(np.mean(changed)) if changed else None,
                "delta_norm_mean": float(np.mean(norms)) if len(norms) == len(ks) else None}
        table[v] = row
    return table


def _mean_row(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    methods = list(next(iter(table.values()))) if table else []
    out: dict[str, dict[str, float | None]] = {}
    for m in methods:
        cell: dict[str, float | None] = {}
        for metric in ("csr", "fr"):
            xs = [r[m][metric] for r in table.values() if r[m][metric] is not None]
            cell[metric] = float(np.mean(xs)) if xs else None
        out[m] = cell
    return out


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _judge_card_text(judge: dict[str, Any]) -> str:
    """The judge card in one clause: kappa against the readers when it was measured."""
    if judge.get("kappa") is not None:
        return (f" (judge card: Cohen's kappa {judge['kappa']:.2f}, agreement "
                f"{judge['agreement']:.2f} with careful readers on labelled replies, "
                f"{judge.get('agreement_note', '')})")
    if judge.get("agreement") is not None:
        return (f" (value-judge agreement {judge['agreement']:.2f}: "
                f"{judge.get('agreement_note', '')}; not measured on replies: run "
                "`conva-mlx judge-check`)")
    return " (no judge card: run `conva-mlx judge-check` for this judge)"


def render_markdown(results: dict[str, Any]) -> str:
    table = results["values"]
    methods = list(results["mean"])
    lines = ["# Evaluation results", "",
             f"Model `{results['model']['id']}` (fingerprint {results['model']['fingerprint']}),"
             f" pack `{results['pack']['path']}` (recipe "
             f"`{results.get('recipe', {}).get('name', 'accuracy')}`), dataset "
             f"{results['dataset_hash']}; prompts: {results.get('prompts', 'test dilemmas')}; "
             f"judge `{results['judge'].get('name', results['judge']['kind'])}`"
             + _judge_card_text(results["judge"]) + ".",
             "", "Cells: CSR / FR (control success rate / fluency rate), n = "
             + ", ".join(sorted({str(c['n']) for r in table.values() for c in r.values()}))
             + " prompts per value.", "",
             "| value | " + " | ".join(methods) + " |",
             "|---|" + "---|" * len(methods)]
    for v, row in table.items():
        lines.append(f"| {v} | " + " | ".join(f"{_fmt(row[m]['csr'])} / {_fmt(row[m]['fr'])}"
                                              for m in methods) + " |")
    mean = results["mean"]
    lines.append("| **mean** | " + " | ".join(
        f"**{_fmt(mean[m]['csr'])} / {_fmt(mean[m]['fr'])}**" for m in methods) + " |")
    gates = {m: [r[m]["gate_open_rate"] for r in table.values()
                 if r[m]["gate_open_rate"] is not None] for m in methods}
    gate_cells = [f"{m} {np.mean(g):.2f}" for m, g in gates.items() if g]
    if gate_cells:
        lines += ["", "Gate open rate on the test dilemmas: " + ", ".join(gate_cells) + "."]
    for key, text in (("changed_vs_none", "Share of replies that differ from the unsteered "
                                          "reply to the same prompt"),
                      ("delta_norm_mean", "Mean |delta| per steered block")):
        cells = {m: [r[m][key] for r in table.values() if r[m].get(key) is not None]
                 for m in methods}
        shown = [f"{m} {np.mean(c):.2f}" for m, c in cells.items() if c and m != "none"]
        if shown:
            lines += ["", f"{text}: " + ", ".join(shown) + "."]
    if results.get("general_ability"):
        ga = results["general_ability"]
        lines += ["", "## General ability (value-unrelated multiple choice)", "",
                  "| method | accuracy | n | gate open rate |", "|---|---|---|---|"]
        lines += [f"| {m} | {_fmt(g['accuracy'])} | {g['n']} | {_fmt(g['gate_open_rate'])} |"
                  for m, g in ga.items()]
    return "\n".join(lines) + "\n"


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # logs and pipes: do not wrap the table at 80 columns
        console = Console(width=160)
    methods = list(results["mean"])
    t = Table(title="CSR / FR per value and method")
    t.add_column("value")
    for m in methods:
        t.add_column(m, justify="center")
    for v, row in results["values"].items():
        t.add_row(v, *(f"{_fmt(row[m]['csr'])} / {_fmt(row[m]['fr'])}" for m in methods))
    t.add_row("[bold]mean", *(f"[bold]{_fmt(results['mean'][m]['csr'])} / "
                              f"{_fmt(results['mean'][m]['fr'])}" for m in methods))
    console.print(t)
    if results.get("general_ability"):
        g = Table(title="General ability (MCQ accuracy)")
        for c in ("method", "accuracy", "n", "gate open"):
            g.add_column(c)
        for m, r in results["general_ability"].items():
            g.add_row(m, _fmt(r["accuracy"]), str(r["n"]), _fmt(r["gate_open_rate"]))
        console.print(g)
    j = results["judge"]
    console.print(f"value judge: {j.get('name', j['kind'])}{_judge_card_text(j)}")
    unparse = sum(c["value_unparseable"] + c["fluency_unparseable"]
                  for r in results["values"].values() for c in r.values())
    if unparse:
        console.print(f"[yellow]{unparse} judge answers could not be parsed (excluded)")


def generation_settings(ctx: EvalContext, opts: EvalOptions) -> dict[str, Any]:
    """What the saved generations depend on (beyond their key)."""
    lm = ctx.session.lm
    return {"model_fingerprint": lm.fingerprint, "pack_sha256": ctx.pack.digest(),
            "max_tokens": opts.max_tokens, "temp": opts.temp, "seed": opts.seed,
            "p0": opts.p0, "caa_coef": opts.caa_coef, "mode": opts.mode,
            "direction": opts.direction, "positions": opts.positions}


EVAL_RUN = OutputKind("conva-mlx eval run", "run.json", ())


def check_run_dir(out: Path) -> Path:
    """An evaluation writes into a new or empty folder, or resumes one that holds a run
    (run.json) or only a recipe's pack-* folder; any other folder, or a file, is refused
    so that no file of the user's is replaced."""
    out = Path(out).expanduser()
    own = out.is_dir() and all(p.name.startswith("pack-") and p.is_dir()
                               for p in out.iterdir())
    if own and any(out.iterdir()):
        return out
    return check_output_dir(out, EVAL_RUN, force=True)


def check_run_settings(ctx: EvalContext, opts: EvalOptions) -> None:
    """Refuse to mix generations made with other settings into one output directory."""
    want = generation_settings(ctx, opts)
    have = saved_settings(ctx.out / "run.json", want)
    if have is not None:
        diff = [f"{k}={have.get(k)!r} (now {v!r})" for k, v in want.items()
                if have.get(k) != v]
        if diff:
            raise ConvaError(f"{ctx.out} holds generations made with other settings: "
                             + ", ".join(diff) + "; use another --out or the same settings")


def run_eval(ctx: EvalContext, opts: EvalOptions) -> dict[str, Any]:
    """Run (or resume) the evaluation; write and return the results."""
    if not opts.values:
        raise ConvaError("choose at least one value")
    if opts.negative_prompt:
        opts.general = False
    for m in opts.methods:
        if m == "conva-uncontrolled":
            for v in opts.values:
                if ctx.pack.value(v).uncontrolled is None:
                    raise ConvaError(f"the pack has no non-context-controlled probes for {v}")
        if m != "none":
            for v in opts.values:
                ctx.pack.value(v)
    items = load_items(opts.values, opts.n, opts.prompts_file, ctx.data, opts.split)
    check_run_dir(ctx.out)
    ctx.out.mkdir(parents=True, exist_ok=True)
    check_run_settings(ctx, opts)
    gens = _generate_all(ctx, opts, items)
    judge = ctx.judge_factory()
    judgements = _judge_all(ctx, opts, items, gens, judge)
    general = _general_ability(ctx, opts) if opts.general else {}
    table = compute_metrics(opts, items, gens, judgements, judge.name)
    lm = ctx.session.lm
    pack_json = ctx.pack_path / "pack.json" if ctx.pack_path is not None else None
    results: dict[str, Any] = {
        "model": {"id": lm.model_id, "fingerprint": lm.fingerprint},
        "pack": {"path": str(ctx.pack_path) if ctx.pack_path else None,
                 "pack_json_sha256": sha256_file(pack_json)
                 if pack_json is not None and pack_json.is_file() else None},
        "dataset_hash": ctx.data.digest(),
        "prompts": str(opts.prompts_file) if opts.prompts_file else
        ("calibration dilemmas (odd half)" if opts.split == "calibration"
         else "test dilemmas (even half)"),
        "recipe": ctx.pack.recipe.to_json(),
        "settings": {"max_tokens": opts.max_tokens, "temp": opts.temp, "seed": opts.seed,
                     "p0": opts.p0, "caa_coef": opts.caa_coef, "mode": opts.mode or "prompt",
                     "direction": opts.direction or ctx.pack.recipe.direction,
                     "positions": opts.positions or "all",
                     "split": opts.split,
                     "n": opts.n, "negative_prompt": opts.negative_prompt,
                     "methods": opts.methods},
        "judge": judge.describe(),
        "values": table,
        "mean": _mean_row(table),
        "general_ability": general,
    }
    suffix = "-neg" if opts.negative_prompt else ""
    atomic_write_json(ctx.out / f"results{suffix}.json", results)
    atomic_write_text(ctx.out / f"results{suffix}.md", render_markdown(results))
    from conva_mlx.plots import plot_bars

    bars = {v: {m: c["csr"] for m, c in row.items() if c["csr"] is not None}
            for v, row in table.items()}
    if any(bars.values()):
        plot_bars(bars, ctx.out / f"csr{suffix}.png", "Control success rate", "CSR")
    return results
