"""The choice instrument: what steering does to the model's choices, without a judge.

Each held-out dilemma has two written actions (`choices/<value>.jsonl`): the one its value
prefers and the one its competing value prefers. Two forms, one engine path
(`SteeringSession`, the same steering decisions `generate` takes):
- likelihood: LR = log p(value action) - log p(competing action) as the start of the reply;
- letter: the dilemma with "Choices: (A) ... (B) ...", the reply prefilled with "(", the
  choice rate P(value letter) / (P(A) + P(B)), asked in both letter orders and averaged
  (so a pure letter bias scores 0.5; the bias itself is reported).
A method's effect is the shift against `none`, paired by dilemma, with a stratified
bootstrap 95% interval, and the share of dilemmas that moved toward the value. With
`leakage`, every steered value is also scored on every other value's dilemmas (10 x 10).
Scores are stored as they come (DIR/choices.jsonl) so an interrupted run resumes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import mlx.core as mx
import numpy as np

from conva_mlx.data.dataset import ValueData
from conva_mlx.errors import ConvaError
from conva_mlx.evaluation.promise import promise_check, render_promise
from conva_mlx.evaluation.stats import mean_ci, paired_shift
from conva_mlx.evaluation.store import JsonlStore, saved_settings
from conva_mlx.fsutil import OutputKind, atomic_write_json, atomic_write_text, check_output_dir
from conva_mlx.probes.gate import dilemma_split
from conva_mlx.probes.recipe import check_p0
from conva_mlx.progress import progress_bar
from conva_mlx.steering import SteerConfig, SteeringSession, Target
from conva_mlx.steering.config import Mode, check_calibrated_strength
from conva_mlx.values import VALUE_NAMES

Form = Literal["likelihood", "letter"]
FORMS: tuple[str, ...] = get_args(Form)
Split = Literal["test", "calibration"]
CHOICE_METHODS = ("none", "ica", "calibrated", "ica+calibrated", "caa", "conva", "conva-nogate")
# ica+calibrated: ICA's instruction + the calibrated push, both only where the gate opens
CALIBRATED_SETTINGS = ("calibrated", "ica+calibrated")  # strength 1 = the calibrated push
PACK_SETTINGS = (*CALIBRATED_SETTINGS, "caa", "conva", "conva-nogate")  # need a pack
LETTER_PREFIX = "("
UNSTEERED = "-"  # the steered-value slot of the unsteered scores
CHOICES_RUN = OutputKind("conva-mlx choices run", "choices-run.json", ())


@dataclass(frozen=True)
class ChoiceItem:
    id: str
    value: str
    competing: str
    prompt: str
    value_action: str
    competing_action: str


def load_choice_items(values: list[str], split: Split = "test", n: int | None = None,
                      data: ValueData | None = None) -> list[ChoiceItem]:
    """Each value's dilemmas of one half (odd = calibration, even = test), at most n each,
    with their two written actions."""
    data = data or ValueData()
    items: list[ChoiceItem] = []
    for v in values:
        dilemmas = data.dilemmas(v)
        actions = data.choices(v)
        calib, test = dilemma_split([d.id for d in dilemmas])
        half = [dilemmas[i] for i in (calib if split == "calibration" else test)]
        for d in half[: n if n is not None else None]:
            c = actions.get(d.id)
            if c is None:
                raise ConvaError(f"choices/{v}.jsonl has no actions for dilemma {d.id}")
            items.append(ChoiceItem(d.id, v, d.competing, d.prompt, c.value_action,
                                    c.competing_action))
    return items


# ---------------------------------------------------------------- methods and strengths

@dataclass(frozen=True)
class MethodSetting:
    """One method at one strength: CAA's coefficient or ConVA's P0 (None = the default:
    CAA x1, the pack's per-value P0)."""

    method: str
    strength: float | None = None

    @property
    def label(self) -> str:
        if self.strength is None:
            return self.method
        if self.method == "caa" or self.method in CALIBRATED_SETTINGS:
            return f"{self.method} x{self.strength:g}"
        return f"{self.method} P0 {self.strength:g}"

    @property
    def steers(self) -> bool:
        return self.method != "none"

    @property
    def push_strength(self) -> float:
        """CAA's coefficient or the calibrated push's strength (None = 1: CAA x1, the
        calibrated push itself)."""
        return 1.0 if self.strength is None else self.strength

    def config(self, value: str, mode: Mode | None = None) -> SteerConfig:
        if self.method in ("none", "ica"):
            return SteerConfig([Target(value)], method=self.method)  # type: ignore[arg-type]
        if self.method == "caa":
            return SteerConfig([Target(value)], method="caa", caa_coef=self.push_strength)
        if self.method in CALIBRATED_SETTINGS:
            return SteerConfig([Target(value)], method="calibrated", strength=self.push_strength,
                               instruct=self.method == "ica+calibrated")
        return SteerConfig([Target(value, self.strength)], method="conva",
                           gate=self.method == "conva", mode=mode or "prompt")


def _check_strength(method: str, strength: float) -> None:
    if method in ("none", "ica"):
        raise ConvaError(f"method {method} takes no strength")
    if method == "caa" and not (np.isfinite(strength) and strength > 0):
        raise ConvaError(f"CAA's strength is a coefficient > 0, got {strength:g}")
    if method in CALIBRATED_SETTINGS:
        check_calibrated_strength(strength, f"{method}'s strength")
    if method.startswith("conva"):
        check_p0(strength, "ConVA's strength P0")


def parse_settings(spec: str, strengths: list[float] | None = None,
                   caa_coef: float | None = None, p0: float | None = None
                   ) -> list[MethodSetting]:
    """'none,ica,caa,conva' (a method may carry its strength: 'caa:2', 'conva:0.99').
    `strengths` sweeps every method that has a strength; `caa_coef` / `p0` set the
    strength of those without one."""
    out: list[MethodSetting] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, s = part.partition(":")
        name = name.strip()
        if name not in CHOICE_METHODS:
            raise ConvaError(f"unknown method '{name}' (choose from {', '.join(CHOICE_METHODS)})")
        given: list[float | None]
        if s:
            try:
                given = [float(s)]
            except ValueError as exc:
                raise ConvaError(f"bad strength '{s}' in '{part}'") from exc
        elif strengths and name not in ("none", "ica"):
            given = list(strengths)
        elif name == "caa":
            given = [caa_coef]
        elif name.startswith("conva"):
            given = [p0]
        else:
            given = [None]
        for g in given:
            if g is not None:
                _check_strength(name, g)
            out.append(MethodSetting(name, g))
    if not out:
        raise ConvaError("choose at least one method")
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------- scoring

def letter_prompt(item: ChoiceItem, value_first: bool) -> str:
    """CAA's format: the question, then "Choices:" with (A) and (B)."""
    a, b = ((item.value_action, item.competing_action) if value_first
            else (item.competing_action, item.value_action))
    return f"{item.prompt}\n\nChoices:\n(A) {a}\n(B) {b}"


LetterIds = tuple[list[int], list[int]]


def letter_ids(tokenizer: Any) -> LetterIds:
    """Token ids of 'A' and of 'B' right after '(': the bare letter and, where the
    tokenizer has one, the letter with a leading space (Qwen answers "( A" as often)."""
    out: list[list[int]] = []
    for letter in "AB":
        ids = []
        for form in (letter, f" {letter}"):
            enc = tokenizer.encode(form, add_special_tokens=False)
            if len(enc) == 1:
                ids.append(int(enc[0]))
        if not ids:
            raise ConvaError(f"the tokenizer has no single token for '{letter}'")
        out.append(ids)
    return out[0], out[1]


def letter_shares(logits: mx.array, ids: LetterIds) -> float:
    """P(A) / (P(A) + P(B)) from next-token logits, each letter's forms summed."""
    lg = np.array(logits.astype(mx.float32)).astype(np.float64)
    top = lg.max()
    pa = float(np.exp(lg[ids[0]] - top).sum())
    pb = float(np.exp(lg[ids[1]] - top).sum())
    return pa / (pa + pb)


def _delta_norm(layers: list[Any]) -> float:
    return round(float(np.mean([x.delta_norm for x in layers])), 4) if layers else 0.0


def score_key(form: str, setting: MethodSetting, steered: str, item_id: str) -> str:
    return json.dumps([form, setting.method, setting.strength, steered, item_id])


def score_likelihood(session: SteeringSession, items: list[ChoiceItem],
                      cfg: SteerConfig) -> list[dict[str, Any]]:
    scored = session.loglik_batch(
        [(it.prompt, [it.value_action, it.competing_action]) for it in items], cfg)
    return [{"score": s.logliks[0] - s.logliks[1], "ll_value": s.logliks[0],
             "ll_competing": s.logliks[1], "gate_open": s.gate.open if s.gate.used else None,
             "delta_norm": _delta_norm(s.layers)} for s in scored]


def score_letter(session: SteeringSession, items: list[ChoiceItem], cfg: SteerConfig,
                 ids: LetterIds) -> list[dict[str, Any]]:
    prompts = [letter_prompt(it, first) for it in items for first in (True, False)]
    scored = session.next_token_logits_batch(prompts, cfg, LETTER_PREFIX)
    out = []
    for i in range(len(items)):
        (la, gate), (lb, _) = scored[2 * i], scored[2 * i + 1]
        a_first = letter_shares(la, ids)  # value is A
        a_second = letter_shares(lb, ids)  # value is B
        out.append({"score": (a_first + (1.0 - a_second)) / 2.0,
                    "p_a": (a_first + a_second) / 2.0,
                    "gate_open": gate.open if gate.used else None})
    return out


# ---------------------------------------------------------------- the run

@dataclass
class ChoiceOptions:
    values: list[str]
    settings: list[MethodSetting]
    form: Form = "likelihood"
    split: Split = "test"
    n: int | None = None
    mode: Mode | None = None  # ConVA's mode; None = prompt
    batch_size: int = 16
    leakage: bool = False  # score every steered value on every value's dilemmas
    ids: frozenset[str] | None = None  # only these dilemmas (None = the half's first n)
    # set the calibrated settings' measured shares beside the pack calibration's promise
    promise: bool = False
    show_progress: bool = True
    progress: Callable[[int, int], None] | None = None


@dataclass
class ChoiceRun:
    session: SteeringSession
    out: Path
    data: ValueData = field(default_factory=ValueData)


def _work(opts: ChoiceOptions, items: list[ChoiceItem]
          ) -> list[tuple[MethodSetting, str, list[ChoiceItem]]]:
    """(setting, steered value, dilemmas to score under it) for every unit of the run."""
    units: list[tuple[MethodSetting, str, list[ChoiceItem]]] = []
    none = MethodSetting("none")
    units.append((none, UNSTEERED, items))  # the baseline every shift is paired against
    for s in opts.settings:
        if not s.steers:
            continue
        for v in opts.values:
            units.append((s, v, items if opts.leakage else [it for it in items if it.value == v]))
    return units


def check_run(run: ChoiceRun) -> None:
    """Refuse to mix scores of another model or pack into one output directory."""
    lm, pack = run.session.lm, run.session.pack
    want = {"model_fingerprint": lm.fingerprint,
            "pack_sha256": pack.digest() if pack is not None else None}
    have = saved_settings(run.out / "choices-run.json", want)
    if have is not None:
        diff = [k for k, v in want.items() if have.get(k) != v]
        if diff:
            raise ConvaError(f"{run.out} holds choice scores of another "
                             f"{' and '.join(k.split('_')[0] for k in diff)}; use another "
                             "--out")


def score_all(run: ChoiceRun, opts: ChoiceOptions, items: list[ChoiceItem]) -> JsonlStore:
    """Score what is missing, a batch of dilemmas (same setting and steered value) at a time."""
    store = JsonlStore(run.out / "choices.jsonl")
    ids = letter_ids(run.session.lm.tokenizer) if opts.form == "letter" else ([], [])
    todo = []
    for setting, steered, its in _work(opts, items):
        missing = [it for it in its
                   if score_key(opts.form, setting, steered, it.id) not in store]
        for i in range(0, len(missing), opts.batch_size):
            todo.append((setting, steered, missing[i:i + opts.batch_size]))
    total = sum(len(c) for *_, c in todo)
    with progress_bar(total, f"choices ({opts.form})", opts.show_progress,
                      opts.progress) as advance:
        for setting, steered, chunk in todo:
            value = chunk[0].value if steered == UNSTEERED else steered
            cfg = setting.config(value, opts.mode)
            rows = (score_letter(run.session, chunk, cfg, ids) if opts.form == "letter"
                    else score_likelihood(run.session, chunk, cfg))
            for it, row in zip(chunk, rows):
                store.append({"key": score_key(opts.form, setting, steered, it.id),
                              "form": opts.form, "method": setting.method,
                              "strength": setting.strength, "label": setting.label,
                              "steered": steered, "id": it.id, "value": it.value,
                              "competing": it.competing, **row})
            advance(len(chunk))
    return store


def _scores(store: JsonlStore, form: str, setting: MethodSetting, steered: str,
            its: list[ChoiceItem]) -> list[float]:
    return [float(store.records[score_key(form, setting, steered, it.id)]["score"])
            for it in its]


def _by_value(items: list[ChoiceItem]) -> dict[str, list[ChoiceItem]]:
    out: dict[str, list[ChoiceItem]] = {}
    for it in items:
        out.setdefault(it.value, []).append(it)
    return out


def unsteered_scores(store: JsonlStore, form: str, items: list[ChoiceItem]
                     ) -> dict[str, list[float]]:
    """Per value, the unsteered model's scores on its dilemmas (the baseline of every shift)."""
    return {v: _scores(store, form, MethodSetting("none"), UNSTEERED, its)
            for v, its in _by_value(items).items()}


def summarise(store: JsonlStore, opts: ChoiceOptions, items: list[ChoiceItem]
              ) -> dict[str, Any]:
    """Per method: mean score, shift against none with interval, share moved, per value;
    the unsteered profile; the letter bias; the leakage matrices."""
    form, none = opts.form, MethodSetting("none")
    groups = _by_value(items)
    base = unsteered_scores(store, form, items)
    methods: dict[str, Any] = {}
    for setting in [none, *[s for s in opts.settings if s.steers]]:
        per_value: dict[str, Any] = {}
        steered_scores: dict[str, list[float]] = {}
        for v, its in groups.items():
            key_v = UNSTEERED if not setting.steers else v
            xs = _scores(store, form, setting, key_v, its)
            steered_scores[v] = xs
            sh = paired_shift([xs], [base[v]])
            per_value[v] = {"mean": round(float(np.mean(xs)), 4), **sh.as_dict()}
            if form == "likelihood":  # the share a calibration's promise speaks of
                per_value[v]["favoured"] = round(float(np.mean(np.asarray(xs) > 0)), 4)
            gates = [store.records[score_key(form, setting, key_v, it.id)].get("gate_open")
                     for it in its]
            used = [g for g in gates if g is not None]
            if used:
                per_value[v]["gate_open_rate"] = round(float(np.mean(used)), 4)
            if form == "likelihood" and setting.steers:
                norms = [store.records[score_key(form, setting, key_v, it.id)]["delta_norm"]
                         for it in its]
                per_value[v]["delta_norm_mean"] = round(float(np.mean(norms)), 4)
        vals = list(groups)
        pooled = paired_shift([steered_scores[v] for v in vals], [base[v] for v in vals])
        mean, _, _ = mean_ci([steered_scores[v] for v in vals])
        entry: dict[str, Any] = {"mean": round(mean, 4), **pooled.as_dict(),
                                 "per_value": per_value}
        if form == "letter":
            key_of = (lambda v: UNSTEERED) if not setting.steers else (lambda v: v)
            entry["letter_bias_a"] = round(float(np.mean(
                [store.records[score_key(form, setting, key_of(it.value), it.id)]["p_a"]
                 for it in items])), 4)
        methods[setting.label] = entry
    results: dict[str, Any] = {"form": form, "methods": methods,
                               "profile": value_profile(base, form)}
    if opts.leakage:
        results["leakage"] = {s.label: leakage_matrix(store, form, s, items, base)
                              for s in opts.settings if s.steers}
    return results


def value_profile(base: dict[str, list[float]], form: str) -> dict[str, Any]:
    """Unsteered: per value, how often the model favours the value's action (likelihood: the
    share of dilemmas with LR > 0; letter: the mean choice rate), with a 95% interval."""
    out: dict[str, Any] = {}
    for v, xs in base.items():
        arr = np.asarray(xs)
        favoured = (arr > 0).astype(float) if form == "likelihood" else arr
        mean, lo, hi = mean_ci([favoured.tolist()])
        out[v] = {"favoured": round(mean, 4), "ci": [round(lo, 4), round(hi, 4)],
                  "mean_score": round(float(arr.mean()), 4), "n": int(arr.size)}
    return out


def leakage_matrix(store: JsonlStore, form: str, setting: MethodSetting,
                   items: list[ChoiceItem], base: dict[str, list[float]]) -> dict[str, Any]:
    """Rows: the value steered; columns: the value whose dilemmas are scored (paired shifts
    with intervals). Per row: selectivity = target shift / mean |off-target shift|, whether
    the target moved most, and the split the dilemmas' competing values predict (a push for
    v should lower the dilemmas whose competing value is v)."""
    groups = _by_value(items)
    steered_values = [v for v in VALUE_NAMES if v in groups]
    rows: dict[str, Any] = {}
    for sv in steered_values:
        cells: dict[str, Any] = {}
        for u, its in groups.items():
            xs = _scores(store, form, setting, sv, its)
            cells[u] = paired_shift([xs], [base[u]]).as_dict()
        target = float(cells[sv]["shift"])
        off = [abs(float(cells[u]["shift"])) for u in groups if u != sv]
        against: list[float] = []
        rest: list[float] = []
        for u, its in groups.items():
            if u == sv:
                continue
            diffs = np.asarray(_scores(store, form, setting, sv, its)) - np.asarray(base[u])
            for it, d in zip(its, diffs):
                (against if it.competing == sv else rest).append(float(d))
        largest = max(groups, key=lambda u: abs(float(cells[u]["shift"])))
        rows[sv] = {"cells": cells, "target_shift": round(target, 4),
                    "mean_abs_off_target": round(float(np.mean(off)), 4) if off else None,
                    "selectivity": round(target / float(np.mean(off)), 3)
                    if off and np.mean(off) > 0 else None,
                    "largest_mover": largest, "target_is_largest": largest == sv,
                    "competing_is_steered_shift": round(float(np.mean(against)), 4)
                    if against else None, "n_competing_is_steered": len(against),
                    "other_dilemmas_abs_shift": round(float(np.mean(np.abs(rest))), 4)
                    if rest else None}
    sel = [r["selectivity"] for r in rows.values() if r["selectivity"] is not None]
    return {"rows": rows,
            "target_largest_rows": sum(r["target_is_largest"] for r in rows.values()),
            "mean_target_shift": round(float(np.mean([r["target_shift"]
                                                      for r in rows.values()])), 4),
            "mean_abs_off_target": round(float(np.mean(
                [r["mean_abs_off_target"] for r in rows.values()
                 if r["mean_abs_off_target"] is not None])), 4),
            "selectivity": round(float(np.mean([r["target_shift"] for r in rows.values()])
                                       / np.mean([r["mean_abs_off_target"]
                                                  for r in rows.values()])), 3)
            if sel else None}


def run_choices(run: ChoiceRun, opts: ChoiceOptions) -> dict[str, Any]:
    """Score (or resume) and summarise; writes DIR/results.json, results.md and plots."""
    if not opts.values:
        raise ConvaError("choose at least one value")
    if opts.batch_size < 1:
        raise ConvaError("--batch-size must be at least 1")
    needs_pack = [s.label for s in opts.settings if s.method in PACK_SETTINGS]
    if needs_pack and run.session.pack is None:
        raise ConvaError(f"{', '.join(needs_pack)} need a pack (--pack)")
    if run.session.pack is not None and needs_pack:
        for v in opts.values:
            run.session.pack.value(v)
    items = load_choice_items(opts.values, opts.split, opts.n, run.data)
    if opts.ids is not None:
        items = [it for it in items if it.id in opts.ids]
    # A new or empty folder, or one holding a choices run (resumed): never a user's folder.
    check_output_dir(run.out, CHOICES_RUN, force=True)
    run.out.mkdir(parents=True, exist_ok=True)
    check_run(run)
    store = score_all(run, opts, items)
    results = summarise(store, opts, items)
    pack = run.session.pack
    if opts.promise and opts.form == "likelihood" and pack is not None \
            and pack.calibration is not None:
        promises = [promise_check(pack.calibration, s.label, s.method, s.push_strength,
                                  {v: c["favoured"] for v, c in
                                   results["methods"][s.label]["per_value"].items()},
                                  {v: p["favoured"] for v, p in results["profile"].items()})
                    for s in opts.settings if s.method in CALIBRATED_SETTINGS]
        results["promise"] = [p for p in promises if p is not None]
    lm = run.session.lm
    results.update({
        "model": lm.model_id, "fingerprint": lm.fingerprint,
        "split": opts.split, "n_per_value": opts.n,
        "dilemmas": len(items), "values": opts.values,
        "mode": opts.mode or "prompt",
        "measure": ("LR = log p(value action) - log p(competing action) as the reply's start"
                    if opts.form == "likelihood" else
                    "choice rate = P(value letter) / (P(A) + P(B)), both orders averaged"),
    })
    atomic_write_json(run.out / "results.json", results)
    atomic_write_text(run.out / "results.md", render_markdown(results))
    _plots(results, run.out)
    return results


def _plots(results: dict[str, Any], out: Path) -> None:
    from conva_mlx.plots import plot_leakage, plot_profile_radar, plot_shifts

    steered = {m: r for m, r in results["methods"].items() if m != "none"}
    if steered:
        plot_shifts(steered, out / "shifts.png",
                    f"Choice shift against unsteered ({results['form']})")
    plot_profile_radar({v: p["favoured"] for v, p in results["profile"].items()},
                       {v: p["ci"] for v, p in results["profile"].items()},
                       out / "profile.png", f"Value profile, unsteered ({results['form']})")
    for label, mat in results.get("leakage", {}).items():
        name = label.replace(" ", "_")
        plot_leakage(mat, out / f"leakage-{name}.png", f"Leakage: {label}")


def _fmt_ci(ci: list[float]) -> str:
    return f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def render_markdown(results: dict[str, Any]) -> str:
    form = results["form"]
    lines = ["# Value choices", "",
             f"Model `{results['model']}`, {results['dilemmas']} {results['split']}-half "
             f"dilemmas; form `{form}`: {results['measure']}. Shift = steered minus "
             "unsteered per dilemma, mean with a stratified bootstrap 95% interval; moved = "
             "share of dilemmas that moved toward the value.", "",
             "| method | mean | shift | 95% CI | moved |", "|---|---|---|---|---|"]
    for m, r in results["methods"].items():
        lines.append(f"| {m} | {r['mean']:+.3f} | {r['shift']:+.3f} | {_fmt_ci(r['ci'])} | "
                     f"{r['moved']:.2f} |")
    methods = list(results["methods"])
    lines += ["", "Shift per value:", "", "| value | " + " | ".join(methods) + " |",
              "|---|" + "---|" * len(methods)]
    for v in results["values"]:
        cells = []
        for m in methods:
            c = results["methods"][m]["per_value"].get(v)
            cells.append("–" if c is None else f"{c['shift']:+.2f} {_fmt_ci(c['ci'])}")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    what = "share of dilemmas with LR > 0" if form == "likelihood" else "choice rate"
    lines += ["", f"Unsteered value profile ({what}):", "", "| value | favoured | 95% CI |",
              "|---|---|---|"]
    for v, p in results["profile"].items():
        lines.append(f"| {v} | {p['favoured']:.2f} | [{p['ci'][0]:.2f}, {p['ci'][1]:.2f}] |")
    for promise in results.get("promise", []):
        lines += render_promise(promise, results["split"])
    for label, mat in results.get("leakage", {}).items():
        cols = list(next(iter(mat["rows"].values()))["cells"])
        lines += ["", f"Leakage of {label} (rows: value steered; columns: dilemmas scored; "
                      "* = interval excludes 0):", "",
                  "| steered | " + " | ".join(cols) + " | selectivity |",
                  "|---|" + "---|" * (len(cols) + 1)]
        for sv, row in mat["rows"].items():
            cells = []
            for u in cols:
                c = row["cells"][u]
                star = "*" if c["ci"][0] > 0 or c["ci"][1] < 0 else ""
                text = f"{c['shift']:+.2f}{star}"
                cells.append(f"**{text}**" if u == sv else text)
            sel = row["selectivity"]
            lines.append(f"| {sv} | " + " | ".join(cells)
                         + f" | {'–' if sel is None else f'{sel:.2f}'} |")
        lines += ["", f"Target is the largest mover in {mat['target_largest_rows']} of "
                      f"{len(mat['rows'])} rows; mean target shift {mat['mean_target_shift']:+.2f}"
                      f", mean |off-target| {mat['mean_abs_off_target']:.2f}, selectivity "
                      f"{mat['selectivity']}."]
    return "\n".join(lines) + "\n"


def json_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The object `conva-mlx choices --json` prints."""
    return {"methods": {m: {"mean": r["mean"], "shift": r["shift"], "ci": r["ci"],
                            "moved": r["moved"],
                            "per_value": {v: {k: c[k] for k in ("mean", "shift", "ci", "moved",
                                                                "favoured") if k in c}
                                          for v, c in r["per_value"].items()}}
                        for m, r in results["methods"].items()},
            "form": results["form"], "model": results["model"], "split": results["split"],
            "profile": results["profile"],
            **({"promise": results["promise"]} if "promise" in results else {}),
            **({"leakage": {m: {k: v for k, v in mat.items() if k != "rows"}
                            | {"rows": {sv: {k: row[k] for k in
                                             ("target_shift", "selectivity",
                                              "target_is_largest")}
                                        for sv, row in mat["rows"].items()}}
                            for m, mat in results["leakage"].items()}}
               if "leakage" in results else {})}
