"""Activation capture: batched equals one-at-a-time, cache hits are identical, staged
captures resume where they stopped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conva_mlx.models.loading import LoadedModel
from conva_mlx.probes.capture import CaptureOptions, StagedCapture, capture

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


def test_staged_capture_resumes_and_equals_full_passes(tiny_lm: LoadedModel) -> None:
    """Three stages over 4 blocks run 4 blocks per text, not 1 + 3 + 4, and each stage's
    states are the ones a pass from the embeddings gives (the same batches and ops)."""
    opts = CaptureOptions(batch_size=2)
    staged = StagedCapture(tiny_lm, TEXTS, opts, use_cache=False)
    stages = [[0], [1, 2], [3]]
    got = [staged.capture(g, show_progress=False) for g in stages]
    assert staged.blocks_run == 4
    full = capture(tiny_lm, TEXTS, opts, use_cache=False, show_progress=False)
    for group, states in zip(stages, got, strict=True):
        assert states.shape == (len(TEXTS), len(group), tiny_lm.hidden_size)
        assert np.array_equal(states, full[:, group])
    # A stage at or before where the last one stopped cannot resume: a full pass.
    again = staged.capture([1, 2], show_progress=False)
    assert staged.blocks_run == 4 + 3
    assert np.array_equal(again, full[:, [1, 2]])


def test_staged_templated_capture_shares_the_disk_cache(default_lm: LoadedModel,
                                                        tmp_path: Path) -> None:
    """With a chat template (a shared prefix in the KV cache): resumed stages equal the
    plain captures; a stage already on disk is read back, and a later stage still resumes
    from the last one computed."""
    opts = CaptureOptions(chat_template=True, batch_size=2)
    groups = [[1, 2], [3, 4, 5], [6, 7, 8, 9]]
    plain = [capture(default_lm, TEXTS, CaptureOptions(layers=tuple(g), chat_template=True,
                                                       batch_size=2),
                     use_cache=False, show_progress=False) for g in groups]
    capture(default_lm, TEXTS, CaptureOptions(layers=tuple(groups[1]), chat_template=True,
                                              batch_size=2), show_progress=False)
    staged = StagedCapture(default_lm, TEXTS, opts)
    got = [staged.capture(g, show_progress=False) for g in groups]
    assert staged.blocks_run == 3 + (10 - 3)  # blocks 0-2, the cached stage, then 3-9
    for a, b in zip(got, plain, strict=True):
        assert _close(a, b)
