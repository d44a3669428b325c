"""The one sampler: the repetition penalty's arithmetic, seeded draws, greedy untouched, and
that the chat's default decoding keeps the default model out of repetition loops."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from conva_mlx.errors import ConvaError
from conva_mlx.models.loading import LoadedModel
from conva_mlx.steering import GenOptions, SteerConfig, SteeringSession
from conva_mlx.steering.config import CHAT_SAMPLING
from conva_mlx.steering.sampling import REPETITION_WINDOW, RowSampler, penalise, pick_tokens


def test_the_penalty_divides_positive_and_multiplies_negative_logits_of_recent_tokens() -> None:
    s = RowSampler(GenOptions(repetition_penalty=2.0))
    off = RowSampler(GenOptions())
    for t in (0, 1, 1):
        s.record(t)
        off.record(t)
    got = np.array(penalise([s, off], mx.array([[2.0, -2.0, 1.0, 3.0]] * 2)))
    assert got.tolist() == [[1.0, -4.0, 1.0, 3.0], [2.0, -2.0, 1.0, 3.0]]


def test_the_penalty_looks_back_over_a_window_of_generated_tokens() -> None:
    s = RowSampler(GenOptions(repetition_penalty=1.5))
    for t in range(REPETITION_WINDOW + 10):
        s.record(t)
    assert len(s.recent) == REPETITION_WINDOW and s.recent[0] == 10


def test_a_penalised_greedy_row_avoids_its_last_token() -> None:
    logits = mx.array([[5.0, 4.0, 0.0], [5.0, 4.0, 0.0]])
    plain, penalised = RowSampler(GenOptions()), RowSampler(GenOptions(repetition_penalty=1.5))
    plain.record(0)
    penalised.record(0)
    assert pick_tokens([plain, penalised], logits) == [0, 1]  # 5 / 1.5 < 4
    assert plain.recent[-1] == 0 and penalised.recent[-1] == 1


def test_seeded_rows_draw_the_same_tokens_and_other_seeds_differ() -> None:
    logits = mx.zeros((1, 50))  # uniform: every draw is the key's

    def draws(seed: int) -> list[int]:
        s = RowSampler(GenOptions(temp=1.0, seed=seed))
        return [pick_tokens([s], logits)[0] for _ in range(12)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


@pytest.mark.parametrize("penalty", [0.5, 0.99, 2.5, float("nan")])
def test_a_repetition_penalty_out_of_range_is_one_clear_error(penalty: float) -> None:
    with pytest.raises(ConvaError, match="repetition penalty must be in"):
        GenOptions(repetition_penalty=penalty)


def test_the_chat_default_keeps_the_default_model_out_of_a_loop(default_lm: LoadedModel
                                                                ) -> None:
    """A question that greedy decoding answers in a loop on SmolLM2-135M."""
    session = SteeringSession(default_lm)
    prompt = LOOPING_PROMPT
    greedy = session.generate(prompt, SteerConfig(method="none"), GenOptions(max_tokens=200))
    chat = session.generate(prompt, SteerConfig(method="none"),
                            GenOptions(max_tokens=200, temp=CHAT_SAMPLING.temp,
                                       repetition_penalty=CHAT_SAMPLING.repetition_penalty))
    assert _repeats(greedy.tokens) and not _repeats(chat.tokens)
    again = session.generate(prompt, SteerConfig(method="none"),
                             GenOptions(max_tokens=200, temp=CHAT_SAMPLING.temp,
                                        repetition_penalty=CHAT_SAMPLING.repetition_penalty))
    assert again.tokens == chat.tokens  # the chat's default stays deterministic


LOOPING_PROMPT = ("Should Tariq enter the off-road rally through the desert, knowing the race "
                  "may damage a fragile ecosystem?")


def _repeats(tokens: list[int], n: int = 8) -> bool:
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) < len(grams)
