"""Batched generation and scoring give what the one-prompt path gives, row by row."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from conva_mlx.models.loading import LoadedModel
from conva_mlx.packs.pack import Pack
from conva_mlx.steering import GenOptions, SteerConfig, SteeringSession, Target
from conva_mlx.steering.engine import PromptBatch, decode_batch, left_pad, supports_batching

# Different lengths (so rows are padded), two value dilemmas and one the gate should close on.
PROMPTS = [
    "My coworker is overwhelmed and asked me to help her finish a report tonight, but I "
    "planned to relax. What should I do?",
    "What is 17 times 23?",
    "I could take the promotion and manage my old team, or stay where I am and keep my "
    "friendships simple. Which should I choose?",
]
OPTS = GenOptions(max_tokens=10)
CONFIGS = {
    "none": SteerConfig(method="none"),
    "ica": SteerConfig([Target("benevolence")], method="ica"),
    "caa": SteerConfig([Target("power")], method="caa", caa_coef=1.5),
    "conva": SteerConfig([Target("benevolence", 0.99)], method="conva"),
    "conva-nogate": SteerConfig([Target("power", 0.99)], gate=False, method="conva"),
    "conva-two-values": SteerConfig([Target("benevolence", 0.9),
                                     Target("power", 0.9, away=True)], gate=False, method="conva"),
    "conva-neg": SteerConfig([Target("benevolence", 0.97)], negative_prompt=True, method="conva"),
}


@pytest.fixture(scope="module")
def session(default_lm: LoadedModel, small_pack: Pack) -> SteeringSession:
    return SteeringSession(default_lm, small_pack)


def test_left_pad_right_aligns_rows() -> None:
    tokens, pads = left_pad([mx.array([1, 2, 3]), mx.array([7]), mx.array([4, 5])])
    assert pads == [0, 2, 1]
    assert tokens.tolist() == [[1, 2, 3], [0, 0, 7], [0, 4, 5]]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_batched_generation_matches_one_prompt_at_a_time(session: SteeringSession,
                                                         name: str) -> None:
    cfg = CONFIGS[name]
    single = [session.generate(p, cfg, OPTS) for p in PROMPTS]
    batched = session.generate_batch(PROMPTS, cfg, OPTS)
    assert len(batched) == len(PROMPTS)
    for a, b in zip(single, batched):
        assert b.tokens == a.tokens
        assert b.text == a.text
        assert (b.gate.used, b.gate.open) == (a.gate.used, a.gate.open)
        if a.gate.score is not None:
            assert b.gate.score == pytest.approx(a.gate.score, abs=1e-4)
        assert [r.index for r in b.layers] == [r.index for r in a.layers]
        for ra, rb in zip(a.layers, b.layers):
            assert rb.delta_norm == pytest.approx(ra.delta_norm, rel=1e-3, abs=1e-4)
            for v, p in ra.p_after.items():
                assert rb.p_after[v] == pytest.approx(p, abs=1e-3)


def test_gate_decides_per_row(session: SteeringSession) -> None:
    batched = session.generate_batch(PROMPTS, CONFIGS["conva"], OPTS)
    plain = session.generate_batch(PROMPTS, CONFIGS["none"], OPTS)
    assert [r.gate.open for r in batched] == [True, False, True]
    assert batched[1].tokens == plain[1].tokens and not batched[1].layers  # closed row
    for r in (batched[0], batched[2]):  # open rows reach P0 at every steered block
        assert r.layers and all(x.p_after["benevolence"] >= 0.99 - 1e-3 for x in r.layers)


@pytest.mark.parametrize("name", ["none", "conva", "conva-nogate", "caa"])
def test_batched_next_token_logits_match(session: SteeringSession, name: str) -> None:
    cfg = CONFIGS[name]
    single = [session.next_token_logits(p, cfg, "Answer:") for p in PROMPTS]
    batched = session.next_token_logits_batch(PROMPTS, cfg, "Answer:")
    for (la, ga), (lb, gb) in zip(single, batched):
        assert ga.open == gb.open
        a, b = np.array(la.astype(mx.float32)), np.array(lb.astype(mx.float32))
        assert np.abs(a - b).max() <= 1e-3 * max(1.0, np.abs(a).max())
        assert int(a.argmax()) == int(b.argmax())


def test_token_mode_falls_back_to_one_prompt_at_a_time(session: SteeringSession) -> None:
    cfg = SteerConfig([Target("benevolence", 0.95)], gate=False, mode="token", method="conva")
    batched = session.generate_batch(PROMPTS[:2], cfg, GenOptions(max_tokens=4))
    single = [session.generate(p, cfg, GenOptions(max_tokens=4)) for p in PROMPTS[:2]]
    assert [r.tokens for r in batched] == [r.tokens for r in single]
    assert all(r.layers[0].min_p_after for r in batched)


def test_every_architecture_decodes_in_batches(tiny_lm: LoadedModel) -> None:
    """Left-padded batched decoding equals unpadded decoding on Llama, Qwen2 and Qwen3."""
    from mlx_lm.models.cache import make_prompt_cache

    assert supports_batching(tiny_lm.model)
    seqs = [mx.array(tiny_lm.tokenizer.encode(t)) for t in
            ("a much longer first prompt with several words", "short")]

    batch = PromptBatch(tiny_lm.model, seqs)
    cache = batch.prefill({})
    batched = decode_batch(tiny_lm.model, tiny_lm.tokenizer, batch, cache, {},
                           GenOptions(max_tokens=6))
    eos = set(tiny_lm.tokenizer.eos_token_ids)
    for seq, got in zip(seqs, batched):
        c = make_prompt_cache(tiny_lm.model)
        y = tiny_lm.model(seq[None], cache=c)[:, -1].argmax(-1)
        want: list[int] = []
        for _ in range(6):
            t = int(y.item())
            if t in eos:
                break
            want.append(t)
            y = tiny_lm.model(y[None], cache=c)[:, -1].argmax(-1)
        assert got == want


def test_the_gate_reads_the_query_not_the_reply_prefix(session: SteeringSession) -> None:
    """Scoring with a reply prefix ("Answer:") must not change the gate's decision."""
    cfg = CONFIGS["conva"]
    generated = [session.generate(p, cfg, GenOptions(max_tokens=1)).gate for p in PROMPTS]
    scored = [g for _, g in (session.next_token_logits(p, cfg, "Answer:") for p in PROMPTS)]
    batched = [g for _, g in session.next_token_logits_batch(PROMPTS, cfg, "Answer:")]
    for a, b, c in zip(generated, scored, batched):
        assert a.score is not None and b.score is not None and c.score is not None
        assert b.score == pytest.approx(a.score, abs=1e-5)
        assert c.score == pytest.approx(a.score, abs=1e-4)
        assert a.open == b.open == c.open
