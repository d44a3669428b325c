"""Extraction: capture states for the value data, train probes and the gate, build a pack."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .capture import CaptureOptions, capture
from .dataset import ValueData
from .gate import Gate, dilemma_split, query_split, train_gate
from .loading import LoadedModel
from .pack import DEFAULT_P0, ModelInfo, Pack, ValueEntry
from .probes import EXCLUDE_LAST, MIN_ACCURACY, ProbeSet, select_layers, train_probes
from .progress import ProgressCallback
from .values import VALUE_NAMES

# Receives (stage description, done, total): lets the TUI show extraction progress.
StageCallback = Callable[[str, int, int], None]


@dataclass
class ExtractOptions:
    threshold: float = MIN_ACCURACY
    exclude_last: int = EXCLUDE_LAST
    layers: list[int] | None = None  # force these steered layers for every value
    default_p0: float = DEFAULT_P0
    with_nocc: bool = True
    with_gate: bool = True
    test_fraction: float = 0.2
    seed: int = 0
    batch_size: int = 16


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
    states = capture(lm, texts, CaptureOptions(batch_size=opts.batch_size), show_progress=show,
                     callback=_callback(stage, label), description=f"capture {label}")
    return states[: len(pairs)], states[len(pairs):]


def _probe_value(lm: LoadedModel, data: ValueData, value: str, opts: ExtractOptions,
                 show: bool, stage: StageCallback | None) -> ValueEntry:
    pos, neg = _pair_states(lm, data, value, True, opts, show, stage)
    probes = train_probes(pos, neg, test_fraction=opts.test_fraction, seed=opts.seed)
    if opts.layers is not None:
        layers, note = list(opts.layers), "layers chosen by the user"
    else:
        sel = select_layers(probes.accuracies, opts.threshold, opts.exclude_last)
        layers, note = sel.layers, sel.note
    nocc: ProbeSet | None = None
    if opts.with_nocc:
        npos, nneg = _pair_states(lm, data, value, False, opts, show, stage)
        nocc = train_probes(npos, nneg, test_fraction=opts.test_fraction, seed=opts.seed)
    return ValueEntry(value, probes, layers, opts.default_p0, note, nocc)


def gate_candidate_layers(num_layers: int) -> list[int]:
    """Middle blocks: skip the first and the last two (token-level / output-specific)."""
    return list(range(1, max(2, num_layers - 2)))


def extract_gate(lm: LoadedModel, data: ValueData, values: list[str], opts: ExtractOptions,
                 show: bool, stage: StageCallback | None) -> Gate:
    # Value-related training queries: every context-controlled sentence (both members),
    # so the gate learns the topic "a choice about values", not one phrasing.
    related = [s for v in values for p in data.pairs(v) for s in (p.positive, p.negative)]
    dilemmas = [d for v in values for d in data.dilemmas(v)]
    calib_idx, test_idx = dilemma_split([d.id for d in dilemmas])
    queries = [q.prompt for q in data.unrelated_queries()]
    q_train, q_calib, q_test = query_split(len(queries))
    layers = gate_candidate_layers(lm.num_layers)
    texts = related + [d.prompt for d in dilemmas] + queries
    states = capture(lm, texts, CaptureOptions(layers=tuple(layers), chat_template=True,
                                               batch_size=opts.batch_size),
                     show_progress=show, callback=_callback(stage, "gate"),
                     description="capture gate")
    rel = states[: len(related)]
    dil = states[len(related): len(related) + len(dilemmas)]
    qs = states[len(related) + len(dilemmas):]
    return train_gate(rel, qs[q_train], dil[calib_idx], qs[q_calib], dil[test_idx],
                      qs[q_test], layers)


def extract_pack(
    lm: LoadedModel,
    values: list[str] | None = None,
    data: ValueData | None = None,
    opts: ExtractOptions | None = None,
    show_progress: bool = True,
    stage: StageCallback | None = None,
) -> Pack:
    """Build a vector pack for `values` (default: all 10) from the value data."""
    data = data or ValueData()
    opts = opts or ExtractOptions()
    values = values or list(VALUE_NAMES)
    entries = {v: _probe_value(lm, data, v, opts, show_progress, stage) for v in values}
    gate = extract_gate(lm, data, values, opts, show_progress, stage) if opts.with_gate else None
    model = ModelInfo(lm.model_id, lm.fingerprint, lm.architecture, lm.hidden_size,
                      lm.num_layers)
    capture_info = {"reduce": "last", "chat_template": False, "dtype": lm.dtype}
    return Pack(model, entries, gate, data.digest(), capture_info)
