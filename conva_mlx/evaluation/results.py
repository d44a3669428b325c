"""The evaluation's results: typed cells per value and method, their means, general ability,
and the Markdown report. `to_json` gives the format of results.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from conva_mlx.evaluation.items import EvalItem
from conva_mlx.evaluation.mcq import McqScore
from conva_mlx.evaluation.methods import method_label
from conva_mlx.evaluation.store import JsonlStore


def gen_key(method: str, value: str, prompt_id: str, negative_prompt: bool) -> str:
    """The key of one generation in generations.jsonl."""
    return json.dumps([method, value, prompt_id, bool(negative_prompt)])


def judgement_key(judge_name: str, generation_key: str) -> str:
    return json.dumps([judge_name, generation_key])


@dataclass(frozen=True)
class MethodCell:
    """One method on one value's prompts."""
    csr: float | None  # control success rate (None: no parseable verdicts)
    fr: float | None  # fluency rate
    n: int
    value_unparseable: int
    fluency_unparseable: int
    gate_open_rate: float | None  # None: the method has no gate
    changed_vs_none: float | None  # share of replies that differ from the unsteered one
    delta_norm_mean: float | None  # mean |delta| per steered block


@dataclass(frozen=True)
class MeanCell:
    csr: float | None
    fr: float | None


@dataclass
class EvalResults:
    model: dict[str, Any]
    pack: dict[str, Any]
    dataset_hash: str
    prompts: str
    recipe: dict[str, Any]
    settings: dict[str, Any]
    judge: dict[str, Any]
    values: dict[str, dict[str, MethodCell]]  # value -> method label -> cell
    mean: dict[str, MeanCell]  # method label -> mean over values
    general_ability: dict[str, McqScore]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "pack": self.pack, "dataset_hash": self.dataset_hash,
                "prompts": self.prompts, "recipe": self.recipe, "settings": self.settings,
                "judge": self.judge,
                "values": {v: {m: asdict(c) for m, c in row.items()}
                           for v, row in self.values.items()},
                "mean": {m: asdict(c) for m, c in self.mean.items()},
                "general_ability": {m: g.to_json() for m, g in self.general_ability.items()}}


def _rate(xs: list[bool | None]) -> tuple[float | None, int]:
    parsed = [x for x in xs if x is not None]
    return (float(np.mean(parsed)) if parsed else None), len(xs) - len(parsed)


def compute_metrics(methods: list[str], negative_prompt: bool, items: list[EvalItem],
                    gens: JsonlStore, judgements: JsonlStore, judge_name: str
                    ) -> dict[str, dict[str, MethodCell]]:
    table: dict[str, dict[str, MethodCell]] = {}
    for v in dict.fromkeys(it.value for it in items):
        mine = [it for it in items if it.value == v]
        row: dict[str, MethodCell] = {}
        for m in methods:
            ks = [gen_key(m, it.value, it.prompt_id, negative_prompt) for it in mine]
            js = [judgements.records[judgement_key(judge_name, k)] for k in ks]
            csr, bad_v = _rate([j["value"] for j in js])
            fr, bad_f = _rate([j["fluent"] for j in js])
            used = [g["open"] for g in (gens.records[k]["gate"] for k in ks) if g["used"]]
            norms = [float(gens.records[k]["delta_norm_mean"]) for k in ks
                     if gens.records[k].get("delta_norm_mean") is not None]
            # How often the reply differs at all from the plain model's reply to the same
            # prompt (same negative-prompt flag; None when `none` was not run that way).
            plain = [gens.records.get(gen_key("none", it.value, it.prompt_id, negative_prompt))
                     for it in mine]
            changed = [gens.records[k]["text"] != p["text"] for k, p in zip(ks, plain)
                       if p is not None]
            row[method_label(m, negative_prompt)] = MethodCell(
                csr=csr, fr=fr, n=len(ks), value_unparseable=bad_v, fluency_unparseable=bad_f,
                gate_open_rate=float(np.mean(used)) if used else None,
                changed_vs_none=float(np.mean(changed)) if changed else None,
                delta_norm_mean=float(np.mean(norms)) if len(norms) == len(ks) else None)
        table[v] = row
    return table


def mean_row(table: dict[str, dict[str, MethodCell]]) -> dict[str, MeanCell]:
    methods = list(next(iter(table.values()))) if table else []

    def mean(xs: list[float | None]) -> float | None:
        kept = [x for x in xs if x is not None]
        return float(np.mean(kept)) if kept else None

    return {m: MeanCell(csr=mean([r[m].csr for r in table.values()]),
                        fr=mean([r[m].fr for r in table.values()])) for m in methods}


def fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def judge_card_text(judge: dict[str, Any]) -> str:
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


def render_markdown(results: EvalResults) -> str:
    table = results.values
    methods = list(results.mean)
    lines = ["# Evaluation results", "",
             f"Model `{results.model['id']}` (fingerprint {results.model['fingerprint']}),"
             f" pack `{results.pack['path']}` (recipe "
             f"`{results.recipe.get('name', 'accuracy')}`), dataset "
             f"{results.dataset_hash}; prompts: {results.prompts}; "
             f"judge `{results.judge.get('name', results.judge['kind'])}`"
             + judge_card_text(results.judge) + ".",
             "", "Cells: CSR / FR (control success rate / fluency rate), n = "
             + ", ".join(sorted({str(c.n) for r in table.values() for c in r.values()}))
             + " prompts per value.", "",
             "| value | " + " | ".join(methods) + " |",
             "|---|" + "---|" * len(methods)]
    for v, row in table.items():
        lines.append(f"| {v} | " + " | ".join(f"{fmt(row[m].csr)} / {fmt(row[m].fr)}"
                                              for m in methods) + " |")
    mean = results.mean
    lines.append("| **mean** | " + " | ".join(
        f"**{fmt(mean[m].csr)} / {fmt(mean[m].fr)}**" for m in methods) + " |")
    for text, get, skip_none in (
            ("Gate open rate on the test dilemmas", lambda c: c.gate_open_rate, False),
            ("Share of replies that differ from the unsteered reply to the same prompt",
             lambda c: c.changed_vs_none, True),
            ("Mean |delta| per steered block", lambda c: c.delta_norm_mean, True)):
        cells = {m: [get(r[m]) for r in table.values() if get(r[m]) is not None]
                 for m in methods}
        shown = [f"{m} {np.mean(c):.2f}" for m, c in cells.items()
                 if c and not (skip_none and m == "none")]
        if shown:
            lines += ["", f"{text}: " + ", ".join(shown) + "."]
    if results.general_ability:
        lines += ["", "## General ability (value-unrelated multiple choice)", "",
                  "| method | accuracy | n | gate open rate |", "|---|---|---|---|"]
        lines += [f"| {m} | {fmt(g.accuracy)} | {g.n} | {fmt(g.gate_open_rate)} |"
                  for m, g in results.general_ability.items()]
    return "\n".join(lines) + "\n"
