"""Activation capture: batched equals one-at-a-time, cache hits are identical."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conva_mlx.models.loading import LoadedModel
from conva_mlx.probes.capture import CaptureOptions, capture

TEXTS = [
    "I offered to carry my neighbour's groceries up the stairs.",
    "Hi.",
    "Priya stayed late at the office to help a new colleague finish his first report.",
    "How can I make time to visit my grandmother this weekend?",
    "Numbers like 3.14159 and 2.71828 appear everywhere in mathematics and physics.",
]
# Padding changes matmul shapes, so BLAS may sum in a different order: allow float32
# rounding noise relative to the state's scale.
RTOL = 1e-4


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVA_MLX_CACHE", str(tmp_path))


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.abs(a - b).max() <= RTOL * np.abs(b).max())


@pytest.mark.parametrize("reduce", ["last", "mean"])
def test_batched_capture_equals_one_at_a_time(default_lm: LoadedModel, reduce: str) -> None:
    opts = CaptureOptions(reduce=reduce, batch_size=8)  # type: ignore[arg-type]
    batched = capture(default_lm, TEXTS, opts, use_cache=False, show_progress=False)
    single = np.concatenate([
        capture(default_lm, [t], opts, use_cache=False, show_progress=False) for t in TEXTS])
    assert batched.shape == (len(TEXTS), default_lm.num_layers, default_lm.hidden_size)
    assert _close(batched, single)


def test_capture_of_a_layer_subset_matches_full_capture(default_lm: LoadedModel) -> None:
    full = capture(default_lm, TEXTS, use_cache=False, show_progress=False)
    part = capture(default_lm, TEXTS, CaptureOptions(layers=(3, 10, 20)), use_cache=False,
                   show_progress=False)
    assert part.shape == (len(TEXTS), 3, default_lm.hidden_size)
    assert _close(part, full[:, [3, 10, 20]])


def test_cache_hit_returns_identical_arrays(default_lm: LoadedModel, tmp_path: Path) -> None:
    first = capture(default_lm, TEXTS, show_progress=False)
    files = list((tmp_path / "activations").glob("*.npy"))
    assert len(files) == 1
    second = capture(default_lm, TEXTS, show_progress=False)
    assert np.array_equal(first, second)
    templated = capture(default_lm, TEXTS, CaptureOptions(chat_template=True), show_progress=False)
    assert not np.allclose(first, templated)


def test_capture_works_on_every_architecture(tiny_lm: LoadedModel) -> None:
    states = capture(tiny_lm, TEXTS[:3], use_cache=False, show_progress=False)
    single = capture(tiny_lm, TEXTS[2:3], use_cache=False, show_progress=False)
    assert states.shape == (3, 4, tiny_lm.hidden_size)
    assert _close(states[2:3], single)


def test_templated_capture_with_shared_prefix_equals_full_passes(default_lm: LoadedModel) -> None:
    opts = CaptureOptions(chat_template=True, layers=(2, 9, 17))
    shared = capture(default_lm, TEXTS, opts, use_cache=False, show_progress=False)
    single = np.concatenate([
        capture(default_lm, [t], opts, use_cache=False, show_progress=False) for t in TEXTS])
    assert _close(shared, single)
