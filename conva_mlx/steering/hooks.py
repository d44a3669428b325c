"""The block hooks that steer, and the per-block plans they read.

Prompt mode measures delta_l once, from the prompt's last-token state, then adds it at every
position (or, with positions "generated", only from the prompt's last token on); token mode
recomputes it at every position's own state; CAA adds fixed vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from conva_mlx.errors import ConvaError
from conva_mlx.models.layers import BlockHook
from conva_mlx.packs.pack import Pack
from conva_mlx.packs.schema import check_layers
from conva_mlx.probes.perturbation import HalfSpaces, minimal_delta, probe_probability
from conva_mlx.steering.config import SteerConfig, Target
from conva_mlx.steering.reports import LayerReport


@dataclass
class LayerPlan:
    """The probes and constraints of the values steered at one block."""

    index: int
    values: list[str]
    weights: mx.array  # (K, hidden) raw probe weights
    biases: mx.array  # (K,)
    cons: HalfSpaces


def resolve_targets(pack: Pack | None, targets: list[Target], method: str = "conva"
                    ) -> list[Target]:
    """Fill in each target's P0 from the pack (ICA without a pack needs none; for the
    calibrated method a missing level means the calibrated strength, so it stays None)."""
    if pack is None:
        return list(targets)
    if method == "calibrated":
        for t in targets:
            pack.value(t.value)  # the same "not in this pack" error as the other methods
        return list(targets)
    return [Target(t.value, t.p0 if t.p0 is not None else pack.value(t.value).default_p0,
                   t.away) for t in targets]


def check_probes(pack: Pack, targets: list[Target]) -> None:
    """ConVA needs a probe per value; an imported control vector has none."""
    if any(pack.value(t.value).fixed_scale is not None for t in targets):
        raise ConvaError("imported control vectors have no probe; use --method caa")


def _layers_of(pack: Pack, cfg: SteerConfig, value: str) -> list[int]:
    if cfg.layers is not None:  # the same rule as a pack's own layers
        return check_layers(list(cfg.layers), pack.model.num_layers, "the layers setting")
    return pack.value(value).layers


def layer_plans(pack: Pack, cfg: SteerConfig, targets: list[Target]) -> list[LayerPlan]:
    """One plan per steered block, values in the order given (targets carry their P0)."""
    per_layer: dict[int, list[Target]] = {}
    for t in targets:
        for k in _layers_of(pack, cfg, t.value):
            per_layer.setdefault(k, []).append(t)
    plans = []
    for k in sorted(per_layer):
        ts = per_layer[k]
        probe_sets = []
        for t in ts:
            entry = pack.value(t.value)
            probes = entry.probes
            if cfg.probes == "uncontrolled":
                if entry.uncontrolled is None:
                    raise ConvaError(f"the pack has no non-context-controlled probes for "
                                     f"{t.value}")
                probes = entry.uncontrolled
            probe_sets.append(probes)
        w_np = np.stack([p.weights[k] for p in probe_sets])
        w = mx.array(w_np)
        b = mx.array(np.array([p.biases[k] for p in probe_sets], dtype=np.float32))
        moves = None
        if (cfg.direction or pack.recipe.direction) == "mean-diff":
            moves = mx.array(mean_diff_moves(w_np, np.stack([p.caa[k] for p in probe_sets])))
        cons = HalfSpaces.from_probes(w, b, [float(t.p0 or 0.5) for t in ts],
                                      [t.away for t in ts], moves)
        plans.append(LayerPlan(k, [t.value for t in ts], w, b, cons))
    return plans


MIN_ALIGNMENT = 0.05  # cos(w, d) below this: moving along d would need a huge step


def mean_diff_moves(weights: np.ndarray, caa: np.ndarray) -> np.ndarray:
    """Unit mean-difference directions, one per probe row; where the direction is (nearly)
    orthogonal to the probe or points against it, the probe's own direction instead."""
    d = caa / np.maximum(np.linalg.norm(caa, axis=-1, keepdims=True), 1e-12)
    w_unit = weights / np.maximum(np.linalg.norm(weights, axis=-1, keepdims=True), 1e-12)
    cos = (d * w_unit).sum(axis=-1, keepdims=True)
    return np.where(cos >= MIN_ALIGNMENT, d, w_unit).astype(np.float32)


def caa_deltas(pack: Pack, cfg: SteerConfig, targets: list[Target]) -> dict[int, mx.array]:
    """CAA's fixed vectors per block: the sum of each target's signed, scaled mean difference."""
    deltas: dict[int, mx.array] = {}
    for t in targets:
        entry = pack.value(t.value)
        sign = -1.0 if t.away else 1.0
        for k in _layers_of(pack, cfg, t.value):
            d = mx.array(entry.probes.caa[k]) * (sign * cfg.caa_coef)
            deltas[k] = deltas[k] + d if k in deltas else d
    return deltas


def default_strength(pack: Pack | None) -> float:
    """The calibrated method's strength where a request gives none: the calibration's
    (the size readers chose), else 1 (the calibrated push)."""
    return pack.calibration.strength if pack is not None and pack.calibration else 1.0


def calibrated_strength(pack: Pack, cfg: SteerConfig, target: Target) -> float:
    """A target's strength for the calibrated method: the one its level asks for (the share
    of held-out dilemmas that should favour the value), else the configuration's (filled in
    from the pack's default by `engine.resolve_defaults` before any push is planned)."""
    cal = pack.calibration.value(target.value) if pack.calibration is not None else None
    if target.p0 is None or cal is None:
        if cfg.strength is None:
            raise AssertionError("calibrated_strength needs settings resolved with "
                                 "resolve_defaults (strength None)")
        return cfg.strength
    # with the instruction, the curve measured with it (the push alone's where none was)
    return cal.strength_for(target.p0, bool(cfg.instruct) and cal.has_instructed)


def calibrated_deltas(pack: Pack, cfg: SteerConfig, targets: list[Target]
                      ) -> dict[int, mx.array]:
    """The calibrated method's fixed vectors: per target, its calibrated weights on the
    values' directions (each at that value's blocks) times its strength. The direction is
    the calibration's (contrast vectors or mean differences); a pack without a calibration
    pushes each value's own contrast vector (its mean difference where it has none) x
    strength."""
    deltas: dict[int, np.ndarray] = {}
    for t in targets:
        cal = pack.calibration.value(t.value) if pack.calibration is not None else None
        mix = cal.mix if cal is not None else {t.value: 1.0}
        scale = (-1.0 if t.away else 1.0) * calibrated_strength(pack, cfg, t)
        for name, w in mix.items():
            vectors = direction_vectors(pack, name)
            for k in calibrated_blocks(pack, cfg, name):
                d = vectors[k].astype(np.float32) * np.float32(scale * w)
                deltas[k] = deltas[k] + d if k in deltas else d
    return {k: mx.array(d) for k, d in deltas.items()}


def calibrated_blocks(pack: Pack, cfg: SteerConfig, value: str) -> list[int]:
    """Where the calibrated method adds `value`'s vector: the layers setting when given,
    else the calibration's blocks, else the value's own blocks."""
    blocks = pack.calibration.blocks if pack.calibration is not None else None
    return blocks if blocks is not None and cfg.layers is None else _layers_of(pack, cfg, value)


def direction_vectors(pack: Pack, value: str) -> np.ndarray:
    """(layers, hidden): what the calibrated method pushes along for `value`."""
    entry = pack.value(value)
    want = pack.calibration.direction if pack.calibration is not None else None
    if want == "contrast" or (want is None and entry.contrast is not None):
        if entry.contrast is None:
            raise ConvaError(f"the calibration pushes along contrast vectors, but the pack has "
                             f"none for {value}; re-extract the pack or re-run calibrate")
        return entry.contrast
    return entry.probes.caa


def caa_reports(deltas: dict[int, mx.array]) -> list[LayerReport]:
    return [LayerReport(k, {}, {}, vector_norm(d)) for k, d in sorted(deltas.items())]


class PromptModeMeasure:
    """Prompt mode's measuring pass over a (B, L, hidden) batch (B = 1 for one prompt).

    At each steered block, in order, delta_l comes from each row's last-token state (after
    earlier blocks' deltas) and is added at every position of that row. Rows with
    rows_on == 0 (their gate is closed) get delta 0, so they stay exactly unsteered."""

    def __init__(self, plans: list[LayerPlan], rows_on: mx.array | None = None,
                 generated_only: bool = False) -> None:
        self.plans = plans
        self.rows_on = rows_on
        # generated_only: add delta at the prompt's last token only (the first generated
        # token's position), so the prompt's earlier positions and their cache stay plain.
        self.generated_only = generated_only
        self.deltas: dict[int, mx.array] = {}  # (B, hidden) per block
        self.before: dict[int, mx.array] = {}  # (B, hidden) per block
        self._by_index = {p.index: p for p in plans}

    def hooks(self) -> dict[int, BlockHook]:
        return {p.index: self._measure for p in self.plans}

    def _measure(self, k: int, h: mx.array) -> mx.array:
        e = h[:, -1]
        d = minimal_delta(e, self._by_index[k].cons)
        if self.rows_on is not None:
            d = d * self.rows_on[:, None].astype(d.dtype)
        self.deltas[k], self.before[k] = d, e
        if self.generated_only:
            last = (mx.arange(h.shape[1]) == h.shape[1] - 1).astype(h.dtype)
            return h + d[:, None, :] * last[None, :, None]
        return h + d[:, None, :]

    def generation_hooks(self) -> dict[int, BlockHook]:
        """Hooks that keep adding each row's measured deltas at new positions."""
        return {k: add_rows(d) for k, d in self.deltas.items()}

    def reports(self) -> list[list[LayerReport]]:
        """Per row, one report per steered block (none for rows that were not steered)."""
        rows = len(next(iter(self.deltas.values()))) if self.deltas else 0
        on = (np.ones(rows, dtype=bool) if self.rows_on is None
              else np.array(self.rows_on).astype(bool))
        out: list[list[LayerReport]] = [[] for _ in range(rows)]
        for p in self.plans:
            e, d = self.before[p.index], self.deltas[p.index]
            pb = np.array(probe_probability(e, p.weights, p.biases))
            pa = np.array(probe_probability(e + d, p.weights, p.biases))
            norms = np.linalg.norm(np.array(d.astype(mx.float32)), axis=-1)
            for i in np.flatnonzero(on):
                out[i].append(LayerReport(p.index, dict(zip(p.values, pb[i].tolist())),
                                          dict(zip(p.values, pa[i].tolist())),
                                          float(norms[i])))
        return out


def vector_norm(x: mx.array) -> float:
    return float(np.linalg.norm(np.array(x.astype(mx.float32))))


def add_rows(delta: mx.array) -> BlockHook:
    """Add a (B, hidden) delta to every position of each row."""
    def hook(_k: int, h: mx.array) -> mx.array:
        return h + delta[:, None, :].astype(h.dtype)
    return hook


def add_fixed(delta: mx.array) -> BlockHook:
    """Add one (hidden,) vector at every position of every row."""
    def hook(_k: int, h: mx.array) -> mx.array:
        return h + delta.astype(h.dtype)
    return hook


class TokenStats:
    """Token mode's running per-block statistics, kept as mx arrays (no host sync per token)."""

    def __init__(self, plans: list[LayerPlan]) -> None:
        self.plans = {p.index: p for p in plans}
        self.sums: dict[int, list[mx.array]] = {}
        self.mins: dict[int, mx.array] = {}
        self.count: dict[int, int] = {}

    def add(self, k: int, pb: mx.array, pa: mx.array, norms: mx.array) -> None:
        # pb, pa: (positions, K); norms: (positions,)
        stats = [pb.sum(axis=0), pa.sum(axis=0), norms.sum()]
        low = pa.min(axis=0)
        if k in self.sums:
            self.sums[k] = [a + b for a, b in zip(self.sums[k], stats)]
            self.mins[k] = mx.minimum(self.mins[k], low)
        else:
            self.sums[k], self.mins[k] = stats, low
        self.count[k] = self.count.get(k, 0) + int(pb.shape[0])
        mx.async_eval(*self.sums[k], self.mins[k])

    def reports(self) -> list[LayerReport]:
        out = []
        for k in sorted(self.sums):
            p = self.plans[k]
            n = max(1, self.count[k])
            pb, pa, dn = (np.array(x) for x in self.sums[k])
            mins = np.array(self.mins[k])
            out.append(LayerReport(k, {v: float(pb[i] / n) for i, v in enumerate(p.values)},
                                   {v: float(pa[i] / n) for i, v in enumerate(p.values)},
                                   float(dn / n),
                                   {v: float(mins[i]) for i, v in enumerate(p.values)}))
        return out


def reports_so_far(stats: TokenStats | None, fixed: list[LayerReport]) -> list[LayerReport]:
    """Per steered block: token mode's running statistics when it runs, else the reports of
    the fixed deltas (prompt mode, CAA, calibrated)."""
    return stats.reports() if stats is not None else fixed


def token_mode_hooks(plans: list[LayerPlan]) -> tuple[dict[int, BlockHook], TokenStats]:
    """Hooks that recompute the minimal delta at every position's own state."""
    stats = TokenStats(plans)
    by_index = {p.index: p for p in plans}

    def hook(k: int, h: mx.array) -> mx.array:
        plan = by_index[k]
        d = minimal_delta(h, plan.cons)
        flat_e = h.reshape(-1, h.shape[-1])
        flat_d = d.reshape(-1, d.shape[-1])
        pb = probe_probability(flat_e, plan.weights, plan.biases)
        pa = probe_probability(flat_e + flat_d, plan.weights, plan.biases)
        stats.add(k, pb, pa, mx.linalg.norm(flat_d.astype(mx.float32), axis=-1))
        return h + d

    return {p.index: hook for p in plans}, stats
