"""Judges: answer parsers, the MLX MiniLM encoder, the offline judge, the OpenAI judge."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conva_mlx.errors import ConvaError
from conva_mlx.judges import (
    OfflineJudge,
    OpenAIJudge,
    parse_true_false,
    parse_yes_no,
    repeated_ngram_share,
)
from conva_mlx.loading import LoadedModel

# ----- parsers -----------------------------------------------------------------------------


@pytest.mark.parametrize("answer, expected", [
    ("Label: Yes", True),
    ("Label: No", False),
    ("No.", False),
    ("Yes", True),
    ("**Yes**", True),
    ("**Label:** No", False),
    ("No. Bob weighs both options and does not clearly favour benevolence.", False),
    ("Yes, Bob clearly prioritises helping his parents.", True),
    ("I would say yes.", True),
    ("Label: yes\nExplanation: he helps. No doubt about it.", True),
    ("The answer is maybe.", None),
    ("", None),
    ("asdf qwerty 123", None),
    ("Yes or no, it is hard to say.", True),  # leading word wins
    ("It could be yes, it could be no.", None),
])
def test_yes_no_parser_reads_real_looking_answers(answer: str, expected: bool | None) -> None:
    assert parse_yes_no(answer) is expected


@pytest.mark.parametrize("answer, expected", [
    ("True", True),
    ("True. The text is grammatical.", True),
    ("False.", False),
    ("Answer: False", False),
    ("`True`", True),
    ("The text reads fine, so true.", True),
    ("Grammar good", None),
    ("!!!", None),
])
def test_true_false_parser_reads_real_looking_answers(answer: str, expected: bool | None
                                                      ) -> None:
    assert parse_true_false(answer) is expected


def test_repeated_ngram_share_is_zero_for_plain_text_and_high_for_loops() -> None:
    assert repeated_ngram_share("I helped my neighbour carry her groceries home.") == 0.0
    loop = "I will help you. " * 10
    assert repeated_ngram_share(loop) > 0.7


# ----- MiniLM ---------------------------------------------------------------------------------

# Reference: sentence-transformers pipeline (transformers BertModel + torch 2.13 CPU, mean
# pooling, L2 normalisation) on the same weights; the MLX forward matched it to 3e-7.
REF_TEXTS = ["I helped my neighbour carry her groceries.",
             "Power and wealth matter most to me; I want to control others."]
REF_HEAD = np.array([[0.005798, 0.097798, 0.042805, 0.014999, -0.0216, -0.032108, 0.041032,
                      0.008733],
                     [0.021556, 0.033423, -0.03803, 0.007884, 0.027395, -0.006446, 0.059032,
                      -0.066155]])
REF_COSINE = 0.20369168


def test_minilm_matches_the_torch_reference() -> None:
    from conva_mlx.minilm import MiniLM

    enc = MiniLM()
    e = enc.encode([REF_TEXTS[0], "A filler sentence that makes the batch padded.",
                    REF_TEXTS[1]])
    assert e.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(e[[0, 2], :8], REF_HEAD, atol=2e-5)
    assert abs(float(e[0] @ e[2]) - REF_COSINE) < 1e-4
    # batched (padded) equals one at a time
    np.testing.assert_allclose(enc.encode([REF_TEXTS[1]])[0], e[2], atol=1e-5)


# ----- offline judge ----------------------------------------------------------------------------

QUESTION = ("My friend needs help moving house this weekend, but I had planned to relax. "
            "What should I do?")
KIND = ("You should help your friend move. Being there for the people you care about, "
        "and supporting them when they need it, matters more than a lazy weekend.")
SELFISH = ("Skip it. Your own comfort comes first; let your friend sort out their own "
           "problems, it is not your job to carry their boxes.")


@pytest.fixture(scope="module")
def offline_judge(default_lm: LoadedModel) -> OfflineJudge:
    return OfflineJudge(default_lm, ["benevolence"])


def test_offline_judge_says_yes_to_a_benevolent_reply_and_no_to_a_selfish_one(
        offline_judge: OfflineJudge) -> None:
    kind = offline_judge.judge("benevolence", QUESTION, KIND)
    selfish = offline_judge.judge("benevolence", QUESTION, SELFISH)
    assert kind.value.label is True
    assert selfish.value.label is False
    assert kind.fluency.label is True


def test_offline_judge_calls_broken_text_not_fluent(offline_judge: OfflineJudge) -> None:
    words = KIND.split()
    rng = np.random.default_rng(0)
    shuffled = " ".join(words[i] for i in rng.permutation(len(words)))
    assert offline_judge.judge("benevolence", QUESTION, shuffled).fluency.label is False
    loop = "help help help your friend friend " * 8
    assert offline_judge.judge("benevolence", QUESTION, loop).fluency.label is False
    assert offline_judge.judge("benevolence", QUESTION, "").fluency.label is False


def test_offline_judge_in_batches_equals_one_at_a_time(offline_judge: OfflineJudge,
                                                       default_lm: LoadedModel) -> None:
    from conva_mlx.judges import reply_perplexities, reply_perplexity

    items = [("benevolence", QUESTION, KIND), ("benevolence", "Hi?", ""),
             ("benevolence", "What should I do this weekend?", SELFISH),
             ("benevolence", QUESTION, "help help help your friend friend " * 8)]
    batched = offline_judge.judge_batch(items)
    for item, b in zip(items, batched):
        a = offline_judge.judge(*item)
        assert (b.value.label, b.fluency.label) == (a.value.label, a.fluency.label)
        assert b.value.score == pytest.approx(a.value.score, abs=1e-5)
    pairs = [(q, x) for _v, q, x in items if x]
    together = reply_perplexities(default_lm, pairs)
    alone = [reply_perplexity(default_lm, q, x) for q, x in pairs]
    assert together == pytest.approx(alone, rel=1e-4)


def test_offline_judge_reports_its_measured_agreement(offline_judge: OfflineJudge) -> None:
    d = offline_judge.describe()
    assert d["kind"] == "offline"
    assert 0.6 <= d["agreement"] <= 1.0
    assert set(d["per_value"]) == {"benevolence"}


# ----- OpenAI-compatible judge on a real local server --------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def local_server(default_model_dir: Path) -> Iterator[tuple[str, str]]:
    port = _free_port()
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlx_lm", "server", "--model", str(default_model_dir),
         "--host", "127.0.0.1", "--port", str(port), "--max-tokens", "8"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlx_lm server exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(base + "/v1/models", timeout=2):
                    break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("mlx_lm server did not start in 90 s")
                time.sleep(0.5)
        yield base + "/v1", str(default_model_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_openai_judge_against_a_real_local_server(local_server: tuple[str, str]) -> None:
    base_url, model = local_server
    judge = OpenAIJudge(model, base_url=base_url, api_key_env="none", max_retries=1)
    for answer in (KIND, SELFISH):
        j = judge.judge("benevolence", QUESTION, answer)
        # a 135M model may answer anything: parsed, or counted as unparseable - never a crash
        assert j.value.label in (True, False, None)
        assert j.fluency.label in (True, False, None)
        assert isinstance(j.value.raw, str) and isinstance(j.fluency.raw, str)
        if j.value.label is not None:
            assert parse_yes_no(j.value.raw) is j.value.label


def test_openai_judge_without_a_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVA_TEST_NO_KEY", raising=False)
    with pytest.raises(ConvaError, match="CONVA_TEST_NO_KEY"):
        OpenAIJudge("m", api_key_env="CONVA_TEST_NO_KEY")


def test_openai_judge_with_the_server_down_is_a_clear_error() -> None:
    judge = OpenAIJudge("m", base_url=f"http://127.0.0.1:{_free_port()}/v1",
                        api_key_env="none", max_retries=1, backoff=0.01, timeout=2)
    with pytest.raises(ConvaError, match="failed after 2 tries"):
        judge.judge("benevolence", QUESTION, KIND)
