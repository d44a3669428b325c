"""Extraction: capture states for the value data, train probes and the gate, build a pack."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from conva_mlx.data.dataset import GateQuery, ValueData
from conva_mlx.models.loading import LoadedModel
from conva_mlx.packs.pack import ModelInfo, Pack, ValueEntry
from conva_mlx.probes.capture import CaptureOptions, StagedCapture, capture
from conva_mlx.probes.gate import (
    Gate,
    dilemma_split,
    kind_report,
    kind_split,
    query_split,
    train_gate,
)
from conva_mlx.probes.linear import (
    EXCLUDE_LAST,
    MIN_ACCURACY,
    ProbeSet,
    middle_block_selection,
    select_layers,
    train_probes,
)
from conva_mlx.probes.recipe import ACCURACY, Recipe
from conva_mlx.progress import ProgressCallback
from conva_mlx.values import VALUE_NAMES, check_value, parse_values

T = TypeVar("T")

# Receives (stage description, done, total): lets the TUI show extraction progress.
StageCallback = Callable[[str, int, int], None]


@dataclass
class ExtractOptions:
    threshold: float = MIN_ACCURACY
    exclude_last: int = EXCLUDE_LAST
    layers: list[int] | None = None  # force these steered layers for every value
    default_p0: float | None = None  # None: the recipe's P0 for each value
    recipe: Recipe = ACCURACY
    with_uncontrolled: bool = False  # the ablation's probes (CLI extract trains them)
    with_gate: bool = True
    test_fraction: float = 0.2
    seed: int = 0
    batch_size: int = 32
    # The gate's value-related training sentences: both members of this many pairs per
    # value (None: every pair). 20 of 100 keeps held-out precision/recall within 0.004 of
    # all 100 on the default model (tools/bench_gate.py --related-pairs) and halves the
    # texts the gate search captures; see docs/models.md.
    gate_related_pairs: int | None = 20


def _callback(stage: StageCallback | None, name: str) -> ProgressCallback | None:
    if stage is None:
        return None
    return lambda done, total: stage(name, done, total)


def _pair_states(lm: LoadedModel, data: ValueData, value: str, controlled: bool,
                 opts: ExtractOptions, show: bool, stage: StageCallback | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    pairs = data.pairs(value, controlled=controlled)
    texts = [p.positive for p in pairs] + [p.negative for p in pairs]
    label = f"{value}{'' if controlled else ' (ablation)'}"
    cap = CaptureOptions(batch_size=opts.batch_size, chat_template=opts.recipe.chat_template)
    states = capture(lm, texts, cap, show_progress=show,
                     callback=_callback(stage, label), description=f"capture {label}")
    return states[: len(pairs)], states[len(pairs):]


def _probe_value(lm: LoadedModel, data: ValueData, value: str, opts: ExtractOptions,
                 show: bool, stage: StageCallback | None) -> tuple[ValueEntry, np.ndarray]:
    """The value's probes and settings, and its positive sentences' mean state per block."""
    recipe = opts.recipe
    def fit(pos: np.ndarray, neg: np.ndarray) -> ProbeSet:
        return train_probes(pos, neg, test_fraction=opts.test_fraction, seed=opts.seed,
                            c=recipe.c, standardise=recipe.fit == "standardised")

    pos, neg = _pair_states(lm, data, value, True, opts, show, stage)
    probes = fit(pos, neg)
    if opts.layers is not None:
        layers, note = list(opts.layers), "layers chosen by the user"
    elif recipe.layers == "middle-block":
        sel = middle_block_selection(recipe.middle_block(lm.num_layers), recipe.name)
        layers, note = sel.layers, sel.note
    else:
        sel = select_layers(probes.accuracies, opts.threshold, opts.exclude_last)
        layers, note = sel.layers, sel.note
    uncontrolled: ProbeSet | None = None
    if opts.with_uncontrolled:
        npos, nneg = _pair_states(lm, data, value, False, opts, show, stage)
        uncontrolled = fit(npos, nneg)
    p0 = opts.default_p0 if opts.default_p0 is not None else recipe.p0_for(value)
    return ValueEntry(value, probes, layers, p0, note, uncontrolled), pos.mean(axis=0)


def contrast_vectors(positive_means: dict[str, np.ndarray], mean_diffs: dict[str, np.ndarray]
                     ) -> dict[str, np.ndarray]:
    """Per value and block: its positive sentences' mean state minus the other values'
    (one value against the rest, not against its own negation), rescaled to the norm of
    its mean difference at that block so a push along it is as large as CAA's. Empty for
    fewer than two values."""
    if len(positive_means) < 2:
        return {}
    out = {}
    for v, mean in positive_means.items():
        rest = np.mean([m for u, m in positive_means.items() if u != v], axis=0)
        d = mean - rest
        norm = np.linalg.norm(mean_diffs[v], axis=-1, keepdims=True)
        out[v] = (d * norm / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)
                  ).astype(np.float32)
    return out


def gate_candidate_layers(num_layers: int) -> list[int]:
    """Middle blocks: skip the first and the last two (token-level / output-specific)."""
    return list(range(1, max(2, num_layers - 2)))


GATE_STAGE_FRACTIONS = (1 / 6, 1 / 3)  # then the rest


def gate_layer_stages(candidates: list[int]) -> list[list[int]]:
    """Candidate blocks in shallow-first groups, each captured only if still needed.

    `train_gate` keeps the first layer with the best calibration F1, so once a layer
    reaches F1 1.0 no deeper layer can replace it: stopping there gives the same gate
    as scoring every candidate, while the capture's forward pass stops early (on the
    default model the gate needs 5 of 27 blocks: 149 s -> about 30 s fresh).
    """
    stages: list[list[int]] = []
    done = 0
    for fraction in GATE_STAGE_FRACTIONS:
        end = max(done, round(len(candidates) * fraction))
        if end > done:
            stages.append(candidates[done:end])
            done = end
    if done < len(candidates):
        stages.append(candidates[done:])
    return stages


@dataclass
class GateTexts:
    """The gate's training, calibration and test queries, in one list to capture."""

    texts: list[str]
    n_related: int
    n_dilemmas: int
    dilemma_calib: list[int]
    dilemma_test: list[int]
    query_splits: tuple[np.ndarray, np.ndarray, np.ndarray]  # train, calibration, test
    n_queries: int = 0
    beyond: list[GateQuery] = field(default_factory=list)  # after the queries

    def fit(self, states: np.ndarray, layers: list[int]) -> Gate:
        """`train_gate` on captured `states` (texts, len(layers), hidden).

        Queries beyond dilemma wording join training (their train part) and threshold
        calibration (their calibration part); their test part is reported per kind."""
        rel = states[: self.n_related]
        dil = states[self.n_related: self.n_related + self.n_dilemmas]
        start = self.n_related + self.n_dilemmas
        qs = states[start: start + self.n_queries]
        bs = states[start + self.n_queries:]
        q_train, q_calib, q_test = self.query_splits
        b_train, b_calib, b_test = kind_split([q.kind for q in self.beyond])

        def part(idx: list[int], related: bool) -> list[int]:
            return [i for i in idx if self.beyond[i].related == related]

        gate = train_gate(np.concatenate([rel, bs[part(b_train, True)]]),
                          np.concatenate([qs[q_train], bs[part(b_train, False)]]),
                          np.concatenate([dil[self.dilemma_calib], bs[part(b_calib, True)]]),
                          np.concatenate([qs[q_calib], bs[part(b_calib, False)]]),
                          dil[self.dilemma_test], qs[q_test], layers)
        if b_test:
            j = layers.index(gate.layer)
            opened = gate.scores(bs[b_test][:, j]) >= gate.threshold
            gate.by_kind = kind_report([self.beyond[i].kind for i in b_test], opened)
        return gate


def spread(items: list[T], n: int | None) -> list[T]:
    """`n` items spread evenly over the list (all of them when n is None or too large)."""
    if n is None or n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def gate_texts(data: ValueData, values: list[str],
               related_pairs: int | None = None) -> GateTexts:
    """The gate's texts. Value-related training queries: context-controlled sentences
    (both members of each pair, `related_pairs` pairs per value spread over its list, or
    all), so the gate learns the topic "a choice about values", not one phrasing."""
    related = [s for v in values for p in spread(data.pairs(v), related_pairs)
               for s in (p.positive, p.negative)]
    dilemmas = [d for v in values for d in data.dilemmas(v)]
    calib_idx, test_idx = dilemma_split([d.id for d in dilemmas])
    queries = [q.prompt for q in data.unrelated_queries()]
    chosen = set(values)
    beyond = [q for q in data.gate_queries() if not q.related or q.value in chosen]
    return GateTexts(related + [d.prompt for d in dilemmas] + queries + [q.prompt for q in beyond],
                     len(related), len(dilemmas), calib_idx, test_idx,
                     query_split(len(queries)), len(queries), beyond)


def extract_gate(lm: LoadedModel, data: ValueData, values: list[str], opts: ExtractOptions,
                 show: bool, stage: StageCallback | None, *, use_cache: bool = True,
                 resume: bool = True) -> Gate:
    """The shallow-first gate search; each stage's forward pass resumes where the previous
    one stopped (`resume=False`: from the embeddings, as before; same gate)."""
    sets = gate_texts(data, values, opts.gate_related_pairs)
    gate: Gate | None = None
    staged = StagedCapture(lm, sets.texts, CaptureOptions(chat_template=True,
                                                          batch_size=opts.batch_size),
                           use_cache=use_cache, resume=resume)
    for group in gate_layer_stages(gate_candidate_layers(lm.num_layers)):
        states = staged.capture(group, show_progress=show, callback=_callback(stage, "gate"),
                                description=f"capture gate (blocks {group[0]}-{group[-1]})")
        best = sets.fit(states, group)
        if gate is not None:
            # Earlier blocks win ties, as in one search over every candidate.
            best.layer_scores = {**gate.layer_scores, **best.layer_scores}
            if best.layer_scores[best.layer] <= gate.layer_scores[gate.layer]:
                gate.layer_scores = best.layer_scores
                best = gate
        gate = best
        if gate.layer_scores[gate.layer] >= 1.0:
            break  # no deeper layer can beat a perfect calibration F1
    assert gate is not None
    return gate


def extract_pack(
    lm: LoadedModel,
    values: list[str] | None = None,
    data: ValueData | None = None,
    opts: ExtractOptions | None = None,
    show_progress: bool = False,
    stage: StageCallback | None = None,
    timings: dict[str, float] | None = None,
) -> Pack:
    """Build a vector pack for `values` (default: all 10) from the value data.

    `timings`, when given, receives the seconds of each phase: "probes <value>", "gate"."""
    data = data or ValueData()
    opts = opts or ExtractOptions()
    values = values or list(VALUE_NAMES)
    times = timings if timings is not None else {}
    entries = {}
    positive_means = {}
    for v in values:
        start = time.perf_counter()
        entries[v], positive_means[v] = _probe_value(lm, data, v, opts, show_progress, stage)
        times[f"probes {v}"] = time.perf_counter() - start
    for v, c in contrast_vectors(positive_means,
                                 {v: e.probes.caa for v, e in entries.items()}).items():
        entries[v].contrast = c
    gate = None
    if opts.with_gate:
        start = time.perf_counter()
        gate = extract_gate(lm, data, values, opts, show_progress, stage)
        times["gate"] = time.perf_counter() - start
    model = ModelInfo(lm.model_id, lm.fingerprint, lm.architecture, lm.hidden_size,
                      lm.num_layers)
    capture_info = {"reduce": "last", "chat_template": opts.recipe.chat_template,
                    "dtype": lm.dtype}
    return Pack(model, entries, gate, data.digest(), capture_info, recipe=opts.recipe)


def extract(lm: LoadedModel, values: str | Sequence[str] = "all", *,
            data: ValueData | None = None, options: ExtractOptions | None = None,
            show_progress: bool = False, on_stage: StageCallback | None = None) -> Pack:
    """A vector pack for `values` ('all', 'benevolence,power' or a list): probes at every
    block, the steered blocks, CAA vectors and the gate; no progress bar unless asked.
    `on_stage(stage, done, total)` reports progress to a UI instead."""
    names = parse_values(values) if isinstance(values, str) else [check_value(v) for v in values]
    return extract_pack(lm, names, data, options, show_progress, on_stage)
