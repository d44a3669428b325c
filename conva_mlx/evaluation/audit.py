"""`conva-mlx audit`: what a model values, how it encodes the values, how far each can be moved,
what else moves, and what the gate does; numbers for one page (`audit_page` draws it).

Every figure comes from the choice instrument on the test half of the dilemmas (scores kept in
a resumable store per model) or from the pack (probe accuracies, value vectors, the gate)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from conva_mlx.data.dataset import ValueData
from conva_mlx.errors import ConvaError
from conva_mlx.evaluation.choices import (
    UNSTEERED,
    ChoiceItem,
    ChoiceOptions,
    ChoiceRun,
    MethodSetting,
    check_run,
    leakage_matrix,
    load_choice_items,
    score_all,
    score_key,
    unsteered_scores,
    value_profile,
)
from conva_mlx.evaluation.dose import dose_row, hidden_norms
from conva_mlx.evaluation.mcq import score_mcqs
from conva_mlx.evaluation.store import JsonlStore
from conva_mlx.fsutil import OutputKind
from conva_mlx.packs.analysis import value_structure
from conva_mlx.packs.pack import Pack
from conva_mlx.steering import SteerConfig, SteeringSession, Target
from conva_mlx.steering.hooks import default_strength
from conva_mlx.values import VALUE_NAMES, circumplex_distance

AUDIT_FORMAT_VERSION = 1
AUDIT_RUN = OutputKind("conva-mlx audit", "audit-run.json",
                       ("audit-run.json", "report.json", "report.html", "*.png", "scores-*"))
QUICK_N = 6  # dilemmas per value under --quick
QUICK_MCQ = 60  # general-ability questions under --quick
DOSE_SETTINGS = "calibrated:0.5,calibrated:1,calibrated:2,caa:0.5,caa:1,caa:2,conva:0.9,conva:0.99"
# The letter form is used when the model's choice survives swapping the options' order on at
# least this share of dilemmas (a model that reads position picks "A" both times: ~0).
LETTER_CONSISTENCY = 0.6
OPPOSITE_DISTANCE = 4  # circumplex steps at which two values count as opposites


@dataclass
class AuditOptions:
    n: int | None = None  # dilemmas per value on the test half (None = all)
    dose: list[MethodSetting] = field(default_factory=list)
    mcq_n: int | None = None  # general-ability questions (None = all)
    batch_size: int = 16
    show_progress: bool = True


# ---------------------------------------------------------------- the sections

def profile_section(run: ChoiceRun, items: list[ChoiceItem], opts: AuditOptions
                    ) -> dict[str, Any]:
    """Unsteered profile: the letter form when the model can choose (its choice survives
    swapping the options' order), else the likelihood form; both are scored."""
    letter = ChoiceOptions(values=_values(items), settings=[], form="letter", split="test",
                           n=opts.n, batch_size=opts.batch_size,
                           show_progress=opts.show_progress)
    score_all(run, _likelihood(items, opts, []), items)
    store = score_all(run, letter, items)
    recs = [_record(store, "letter", MethodSetting("none"), it) for it in items]
    bias = float(np.mean([r["p_a"] for r in recs]))
    consistency = float(np.mean([order_consistent(r["score"], r["p_a"]) for r in recs]))
    form = "letter" if consistency >= LETTER_CONSISTENCY else "likelihood"
    base = unsteered_scores(store, form, items)
    profile = value_profile(base, form)
    order = sorted(profile, key=lambda v: profile[v]["favoured"])
    strongest, weakest = order[-1], order[0]
    why = (f"letter choices, both orders (the choice survives the swap on "
           f"{consistency:.0%} of dilemmas)" if form == "letter" else
           f"answer likelihoods (letter choices survive swapping the order on only "
           f"{consistency:.0%} of dilemmas; P(A) = {bias:.2f})")
    sentence = (f"Unsteered, the model favours {strongest} most "
                f"({profile[strongest]['favoured']:.0%} of its dilemmas) and {weakest} least "
                f"({profile[weakest]['favoured']:.0%}), measured by {why}.")
    return {"form": form, "letter_bias_a": round(bias, 4),
            "letter_consistency": round(consistency, 4), "values": profile,
            "strongest": strongest, "weakest": weakest, "sentence": sentence}


def encoding_section(session: SteeringSession) -> dict[str, Any]:
    """Probe accuracy by block, value-vector cosines at a common block against the
    circumplex, a 2-D map of the vectors and the opposite values encoded alike."""
    pack = _pack(session)
    values = [v for v in VALUE_NAMES if v in pack.values]
    acc = {v: [round(float(a), 4) for a in pack.values[v].probes.accuracies] for v in values}
    s = value_structure(pack)
    coords = classical_mds(1.0 - s.cosine)
    alike: list[dict[str, Any]] = []
    for i, a in enumerate(s.values):
        for j in range(i + 1, len(s.values)):
            b = s.values[j]
            d = circumplex_distance(a, b)
            if d >= OPPOSITE_DISTANCE and s.cosine[i, j] > s.neighbour_mean:
                alike.append({"a": a, "b": b, "distance": d,
                              "cosine": round(float(s.cosine[i, j]), 4)})
    alike.sort(key=lambda x: -float(x["cosine"]))
    return {"accuracy": acc, "layer": s.layer, "values": s.values,
            "cosine": [[round(float(x), 4) for x in row] for row in s.cosine],
            "mds": {v: [round(float(x), 4) for x in coords[i]] for i, v in enumerate(s.values)},
            "spearman": round(s.spearman, 4), "neighbour_mean": round(s.neighbour_mean, 4),
            "opposite_mean": round(s.opposite_mean, 4), "opposites_alike": alike}


def dose_section(run: ChoiceRun, items: list[ChoiceItem], opts: AuditOptions
                 ) -> dict[str, Any]:
    """Per value and setting, the own-dilemma shift, fluency and |delta| / |h|."""
    default = default_setting(_pack(run.session))
    settings = list(opts.dose)
    if default.label not in {s.label for s in settings}:
        settings.append(default)
    store = score_all(run, _likelihood(items, opts, settings), items)
    pack = _pack(run.session)
    norms = hidden_norms(run.session, [it.prompt for it in items])
    base = {it.id: _record(store, "likelihood", MethodSetting("none"), it) for it in items}
    per_value: dict[str, dict[str, Any]] = {}
    overall: dict[str, Any] = {}
    for s in settings:
        all_rows = []
        for v in _values(items):
            rows = [_record(store, "likelihood", s, it, v) for it in items if it.value == v]
            per_value.setdefault(v, {})[s.label] = dose_row(rows, base, pack, norms)
            all_rows += rows
        overall[s.label] = {"method": s.method, "strength": s.strength,
                            **dose_row(all_rows, base, pack, norms)}
    return {"default": default.label, "settings": [s.label for s in settings],
            "overall": overall, "per_value": per_value,
            "hidden_norm_by_block": [round(float(x), 3) for x in norms]}


def leakage_section(run: ChoiceRun, items: list[ChoiceItem], opts: AuditOptions
                    ) -> dict[str, Any]:
    """The default setting's 10 x 10 matrix, and whether the circumplex's prediction holds
    per steered value (its neighbours move more toward it than its opposites)."""
    default = default_setting(_pack(run.session))
    store = score_all(run, _likelihood(items, opts, [default], leakage=True), items)
    matrix = leakage_matrix(store, "likelihood", default, items,
                            unsteered_scores(store, "likelihood", items))
    circumplex: dict[str, Any] = {}
    for sv, row in matrix["rows"].items():
        near = [row["cells"][u]["shift"] for u in row["cells"]
                if circumplex_distance(sv, u) == 1]
        far = [row["cells"][u]["shift"] for u in row["cells"]
               if circumplex_distance(sv, u) >= OPPOSITE_DISTANCE]
        nm = float(np.mean(near)) if near else float("nan")
        fm = float(np.mean(far)) if far else float("nan")
        circumplex[sv] = {"neighbours": round(nm, 4), "opposites": round(fm, 4),
                          "holds": bool(nm > fm)}
    return {"setting": default.label, **matrix, "circumplex": circumplex,
            "circumplex_holds": sum(c["holds"] for c in circumplex.values())}


def gate_section(session: SteeringSession, values: list[str], opts: AuditOptions,
                 store: JsonlStore, data: ValueData) -> dict[str, Any]:
    """The gate's held-out figures (from the pack) and general ability (multiple-choice
    questions, none of them value-related) unsteered, with the default push behind the gate,
    and with the same push ungated."""
    pack = _pack(session)
    if pack.gate is None:
        return {"present": False}
    configs = {"unsteered": lambda v: SteerConfig(method="none"),
               "default, gated": lambda v: SteerConfig([Target(v)], method="calibrated"),
               "default, no gate": lambda v: SteerConfig([Target(v)], method="calibrated",
                                                         gate=False)}
    scores = score_mcqs(session, data.mcqs()[: opts.mcq_n], configs, values, store,
                        opts.batch_size, opts.show_progress)
    general = {name: s.to_json() for name, s in scores.items()}
    m = pack.gate.metrics
    return {"present": True, "layer": pack.gate.layer,
            "held_out": {"precision": round(m.precision, 4), "recall": round(m.recall, 4),
                         "f1": round(m.f1, 4), "n_related": m.n_related,
                         "n_unrelated": m.n_unrelated},
            "unrelated_open_rate": round(m.false_open_rate, 4),
            "by_kind": pack.gate.by_kind or {}, "general_ability": general}


# ---------------------------------------------------------------- the run

def run_audit(session: SteeringSession, out: Path, opts: AuditOptions,
              data: ValueData | None = None) -> dict[str, Any]:
    """Score (or resume) everything one model's report needs, under `out`."""
    pack = _pack(session)
    data = data or ValueData()
    values = [v for v in VALUE_NAMES if v in pack.values]
    if len(values) < 3:
        raise ConvaError("audit needs a pack with at least 3 values (extract --values all)")
    run = ChoiceRun(session, out, data)
    out.mkdir(parents=True, exist_ok=True)
    check_run(run)
    items = load_choice_items(values, "test", opts.n, data)
    profile = profile_section(run, items, opts)
    dose = dose_section(run, items, opts)
    leakage = leakage_section(run, items, opts)
    gate = gate_section(session, values, opts, JsonlStore(out / "mcq.jsonl"), data)
    lm = session.lm
    return {"model": lm.model_id, "fingerprint": lm.fingerprint,
            "pack": {"recipe": pack.recipe.name, "sha256": pack.digest(),
                     "calibration": pack.calibration_source},
            "split": "test", "n_per_value": opts.n, "dilemmas": len(items), "values": values,
            "profile": profile, "encoding": encoding_section(session), "dose": dose,
            "leakage": leakage, "gate": gate}


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The differences between two models' figures that lie outside their intervals."""
    profile = []
    for v in a["values"]:
        pa, pb = a["profile"]["values"].get(v), b["profile"]["values"].get(v)
        if pa is None or pb is None or a["profile"]["form"] != b["profile"]["form"]:
            continue
        if pa["ci"][0] > pb["ci"][1] or pb["ci"][0] > pa["ci"][1]:
            profile.append({"value": v, "a": pa["favoured"], "b": pb["favoured"]})
    own = []
    for v in a["values"]:
        ra = a["leakage"]["rows"].get(v)
        rb = b["leakage"]["rows"].get(v)
        if ra is None or rb is None:
            continue
        ca, cb = ra["cells"][v]["ci"], rb["cells"][v]["ci"]
        if ca[0] > cb[1] or cb[0] > ca[1]:
            own.append({"value": v, "a": ra["target_shift"], "b": rb["target_shift"]})
    return {"models": [a["model"], b["model"]], "profile_differences": profile,
            "own_shift_differences": own,
            "selectivity": [a["leakage"]["selectivity"], b["leakage"]["selectivity"]],
            "spearman": [a["encoding"]["spearman"], b["encoding"]["spearman"]],
            "same_profile_form": a["profile"]["form"] == b["profile"]["form"]}


# ---------------------------------------------------------------- helpers

def default_setting(pack: Pack) -> MethodSetting:
    """The product's default as the instrument names it: the calibrated push, with ICA's
    instruction before the question where the pack's calibration makes that the default, at
    its default strength."""
    cal = pack.calibration
    method = "ica+calibrated" if cal is not None and cal.instruct else "calibrated"
    return MethodSetting(method, default_strength(pack))


def order_consistent(score: float, p_a: float) -> bool:
    """Whether a letter record's choice is the same option in both orders. The record keeps
    score = (a1 + 1 - a2) / 2 and p_a = (a1 + a2) / 2, with a1 = P(A) when the value is A and
    a2 = P(A) when it is B; so a1 = score + p_a - 1/2 and a2 = p_a - score + 1/2."""
    a1 = score + p_a - 0.5
    a2 = p_a - score + 0.5
    return (a1 > 0.5) == (a2 < 0.5)


def classical_mds(dist: np.ndarray, dims: int = 2) -> np.ndarray:
    """Classical (Torgerson) MDS of a distance matrix: (n, dims) coordinates."""
    d2 = np.asarray(dist, dtype=np.float64) ** 2
    n = d2.shape[0]
    j = np.eye(n) - np.ones((n, n)) / n
    b = -0.5 * j @ d2 @ j
    w, v = np.linalg.eigh(b)
    top = np.argsort(w)[::-1][:dims]
    return v[:, top] * np.sqrt(np.maximum(w[top], 0.0))


def _likelihood(items: list[ChoiceItem], opts: AuditOptions, settings: list[MethodSetting],
                leakage: bool = False) -> ChoiceOptions:
    return ChoiceOptions(values=_values(items), settings=settings, split="test", n=opts.n,
                         leakage=leakage, batch_size=opts.batch_size,
                         show_progress=opts.show_progress)


def _record(store: JsonlStore, form: str, setting: MethodSetting, item: ChoiceItem,
            steered: str = UNSTEERED) -> dict[str, Any]:
    return store.records[score_key(form, setting, steered, item.id)]


def _values(items: list[ChoiceItem]) -> list[str]:
    return list(dict.fromkeys(it.value for it in items))


def _pack(session: SteeringSession) -> Pack:
    if session.pack is None:
        raise ConvaError("audit needs a pack (--pack, or the model's cached pack)")
    return session.pack
