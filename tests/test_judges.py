"""Judges: answer parsers, the MLX MiniLM encoder, the offline judge, the OpenAI judge."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conva_mlx.cli.main import cli
from conva_mlx.data.dataset import ValueData
from conva_mlx.errors import ConvaError
from conva_mlx.evaluation.judge_check import (
    SHIPPED_LABELS,
    LabelledReply,
    cohen_kappa,
    judge_card,
    load_labels,
)
from conva_mlx.evaluation.judge_registry import judge_card_for
from conva_mlx.evaluation.judges import (
    OfflineJudge,
    OpenAIJudge,
    parse_true_false,
    parse_yes_no,
    repeated_ngram_share,
)
from conva_mlx.evaluation.stance_judge import StanceJudge
from conva_mlx.models.loading import LoadedModel
from conva_mlx.probes.gate import dilemma_split
from conva_mlx.values import VALUE_NAMES
from tests.local_servers import free_port, running_server

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
    from conva_mlx.evaluation.minilm import MiniLM

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
    from conva_mlx.evaluation.judges import reply_perplexities, reply_perplexity

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


@pytest.fixture(scope="module")
def local_server(default_model_dir: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    cmd = [sys.executable, "-m", "mlx_lm", "server", "--model", str(default_model_dir),
           "--host", "127.0.0.1", "--port", str(port), "--max-tokens", "8"]
    base = f"http://127.0.0.1:{port}"
    with running_server(cmd, base + "/v1/models", "mlx_lm server", timeout=90):
        yield base + "/v1", str(default_model_dir)


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
    judge = OpenAIJudge("m", base_url=f"http://127.0.0.1:{free_port()}/v1",
                        api_key_env="none", max_retries=1, backoff=0.01, timeout=2)
    with pytest.raises(ConvaError, match=r"cannot reach the server at .* after 2 attempt"):
        judge.judge("benevolence", QUESTION, KIND)


# ----- judge-check: judges measured against reader labels ---------------------------------

# offline-v2's cross-validated kappa is 0.34 (its card); fail if it drops below this.
STATED_KAPPA = 0.30


def _write_labels(path: Path, labels: list[LabelledReply]) -> Path:
    path.write_text("".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in labels))
    return path


def test_cohen_kappa_matches_sklearn_and_its_edge_cases() -> None:
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(3)
    a, b = rng.random(200) < 0.3, rng.random(200) < 0.25
    assert cohen_kappa(list(a), list(b)) == pytest.approx(cohen_kappa_score(a, b))
    assert cohen_kappa([True, False], [True, False]) == 1.0
    assert cohen_kappa([False] * 5, [False] * 5) == 1.0  # one class, full agreement
    assert cohen_kappa([False] * 9 + [True], [False] * 10) == 0.0  # "always no" is chance


def test_judge_card_counts_every_method_and_the_confusion_matrix() -> None:
    labels = [LabelledReply("power", "q", "r", y, f, m, f"p{i}")
              for i, (y, f, m) in enumerate([(True, True, "a"), (False, True, "a"),
                                             (True, False, "b"), (False, True, "b")])]
    card = judge_card("j", labels, [True, True, False, False], [True, True, True, False], "x")
    assert card.n == 4 and card.agreement == 0.5
    assert card.confusion == {"judge_yes_label_yes": 1, "judge_yes_label_no": 1,
                              "judge_no_label_yes": 1, "judge_no_label_no": 1}
    assert card.per_method["a"] == {"n": 2, "judge_csr": 1.0, "label_csr": 0.5,
                                    "judge_fr": 1.0, "label_fr": 1.0}
    assert card.per_method["b"]["judge_fr"] == 0.5 and card.fluency_agreement == 0.5


@pytest.mark.parametrize("line, message", [
    ('{"value": "power", "question": "q", "reply": "r", "value_yes": "yes", "fluent": true}',
     "'value_yes' must be true or false"),
    ('{"value": "kindness", "question": "q", "reply": "r", "value_yes": true, "fluent": true}',
     "unknown value 'kindness'"),
    ('{"value": "power", "reply": "r", "value_yes": true, "fluent": true}',
     "'question' must be a string"),
])
def test_bad_label_files_name_the_file_and_line(tmp_path: Path, line: str, message: str
                                                ) -> None:
    f = tmp_path / "labels.jsonl"
    f.write_text(line + "\n")
    with pytest.raises(ConvaError, match=f"labels.jsonl:1: {message}"):
        load_labels(f)


@pytest.fixture(scope="module")
def shipped_labels() -> list[LabelledReply]:
    return load_labels()


def test_the_shipped_labels_are_the_readers_file() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "judge-labels" / "replies.jsonl"
    if shared.is_file():
        assert shared.read_bytes() == SHIPPED_LABELS.read_bytes()
    assert len(load_labels()) == 830


@pytest.mark.parametrize("name, half, rows", [("replies-test-half.jsonl", 0, 2760),
                                             ("replies-calibration-half.jsonl", 1, 1200)])
def test_the_shipped_steering_labels_sit_in_their_half_of_the_dilemmas(
        name: str, half: int, rows: int) -> None:
    """Issue 31's reader labels: each reply answers its dilemma's own question, from the
    half the file names (tuning and reporting must not mix), once per model and method."""
    path = SHIPPED_LABELS.parent / name
    labels = load_labels(path)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(labels) == len(records) == rows
    data = ValueData()
    prompts = {d.id: d for v in VALUE_NAMES for d in data.dilemmas(v)}
    calibration, test = dilemma_split([lab.prompt_id for lab in labels])
    assert len((calibration, test)[1 - half]) == rows  # every reply in the named half
    keys = set()
    for r, lab in zip(records, labels):
        dilemma = prompts[lab.prompt_id]
        assert (dilemma.prompt, dilemma.value) == (lab.question, lab.value)
        assert r["model"].count("/") == 1 and lab.method != "unknown"
        keys.add((r["model"], lab.method, lab.prompt_id))
    assert len(keys) == rows


def test_judge_check_cli_prints_the_card_as_json(tmp_path: Path,
                                                 shipped_labels: list[LabelledReply]) -> None:
    """On labels it was not trained on, offline-v2 applies its shipped head."""
    few = _write_labels(tmp_path / "few.jsonl", [
        dataclasses.replace(r, prompt_id=f"new-{i}")
        for i, r in enumerate(shipped_labels[::83])])
    result = CliRunner().invoke(cli, ["judge-check", "--labels", str(few), "--json"])
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout)
    assert card["n"] == 10 and card["judge"] == "offline-v2"
    for key in ("kappa", "agreement", "fluency_agreement", "per_method", "confusion"):
        assert key in card
    assert -1 <= card["kappa"] <= 1 and sum(card["confusion"].values()) == 10


def test_judge_check_runs_the_openai_judge_against_a_real_server(
        local_server: tuple[str, str], tmp_path: Path,
        shipped_labels: list[LabelledReply]) -> None:
    base_url, model = local_server
    few = _write_labels(tmp_path / "few.jsonl", shipped_labels[:3])
    result = CliRunner().invoke(cli, ["judge-check", "--labels", str(few), "--judge", "openai",
                                      "--judge-base-url", base_url, "--judge-model", model,
                                      "--judge-api-key-env", "none"])
    assert result.exit_code == 0, result.output
    assert "openai:" in result.stdout and "kappa" in result.stdout


def test_the_shipped_stance_judge_holds_its_stated_agreement(
        default_lm: LoadedModel, shipped_labels: list[LabelledReply]) -> None:
    """Recomputed from scratch (features, grouped CV, fluency): the figures the card states."""
    judge = StanceJudge(default_lm)
    card = judge_card_for(judge, shipped_labels, SHIPPED_LABELS.name)
    assert "cross-validated" in card.note
    assert card.kappa >= STATED_KAPPA
    # the card is honest (float noise from a fresh feature pass may flip a borderline reply)
    assert card.kappa == pytest.approx(judge.card["kappa"], abs=0.02)
    assert card.fluency_agreement >= 0.95
    for m, row in card.per_method.items():
        assert abs(row["judge_csr"] - row["label_csr"]) <= 0.1, m
