"""The real Qwen2.5-Coder-1.5B (`--model qwen2.5-1.5b`): a steered reply.

Runs only when the model is already in the cache (`conva-mlx models qwen2.5-1.5b`), so a
test run never downloads its 1.1 GB. Extracting benevolence reads the activation cache
when a full pack was extracted on this machine (`extract --model qwen2.5-1.5b`), else it
captures 200 sentences (a few minutes on 2 cores).
"""

from __future__ import annotations

import pytest

from conva_mlx.extraction import ExtractOptions, extract_pack
from conva_mlx.models.loading import LoadedModel, load_model
from conva_mlx.models.wheel_models import QWEN25_15B
from conva_mlx.steering import GenOptions, SteerConfig, SteeringSession, Target

pytestmark = pytest.mark.skipif(
    not (QWEN25_15B.mlx_dir / "config.json").is_file(),
    reason="qwen2.5-1.5b is not in the cache (run `conva-mlx models qwen2.5-1.5b`)")

SELFISH = ("My sister cannot pay her rent this month and asked me for a loan. I would rather "
           "keep my savings for a new phone. Write one sentence telling me what to do.")


@pytest.fixture(scope="module")
def qwen15b() -> LoadedModel:
    return load_model("qwen2.5-1.5b")


def test_the_15b_loads_by_name_with_its_own_shape(qwen15b: LoadedModel) -> None:
    assert (qwen15b.architecture, qwen15b.num_layers, qwen15b.hidden_size) == ("qwen2", 28, 1536)
    assert qwen15b.model_id == "Qwen/Qwen2.5-Coder-1.5B-Instruct"


def test_a_steered_reply_on_the_15b_reaches_the_target(qwen15b: LoadedModel) -> None:
    pack = extract_pack(qwen15b, ["benevolence"], opts=ExtractOptions(with_gate=False))
    layers = pack.values["benevolence"].layers
    assert layers and all(0 < k < qwen15b.num_layers for k in layers)
    session = SteeringSession(qwen15b, pack)
    p0 = 0.99
    result = session.generate(SELFISH, SteerConfig([Target("benevolence", p0)], gate=False,
                                                   method="conva"),
                              GenOptions(max_tokens=24))
    assert result.text.strip()
    assert [r.index for r in result.layers] == layers
    # The prompt reads below the target somewhere, so the minimal delta is not zero there,
    # and after steering every steered block reads at the target.
    assert any(r.p_before["benevolence"] < p0 and r.delta_norm > 0 for r in result.layers)
    for r in result.layers:
        assert r.p_after["benevolence"] >= p0 - 1e-3
