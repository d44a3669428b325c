"""The data validator accepts the shipped data and names every problem in a corrupted copy."""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conva_mlx.data.dataset import SHIPPED_DATA
from conva_mlx.data.validate import (
    _candidates,
    pair_problems,
    token_similarity,
    validate_data,
)

Record = dict[str, Any]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A private copy of the shipped data to corrupt."""
    root = tmp_path / "data"
    shutil.copytree(SHIPPED_DATA, root)
    return root


def edit(path: Path, lineno: int, change: Callable[[Record], Record | None]) -> None:
    """Replace record `lineno` (1-based) with change(record); None deletes the line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    new = change(json.loads(lines[lineno - 1]))
    if new is None:
        del lines[lineno - 1]
    else:
        lines[lineno - 1] = json.dumps(new)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def record(path: Path, lineno: int) -> Record:
    result: Record = json.loads(path.read_text(encoding="utf-8").splitlines()[lineno - 1])
    return result


def errors(root: Path) -> list[str]:
    return [str(e) for e in validate_data(root).errors]


def has_error(errs: list[str], where: str, words: str) -> bool:
    return any(e.startswith(where + ":") and words in e for e in errs)


# ------------------------------------------------------------------ shipped data

def test_shipped_data_passes_validation_within_seconds() -> None:
    start = time.perf_counter()
    report = validate_data(SHIPPED_DATA)
    elapsed = time.perf_counter() - start
    assert report.errors == [], "\n".join(map(str, report.errors[:20]))
    assert report.totals["pairs"] == 1000
    assert report.totals["dilemmas"] == 600
    assert report.totals["unrelated_queries"] >= 400
    assert report.totals["mcq"] >= 150
    assert elapsed < 10


def test_report_has_a_stats_row_per_value_and_block() -> None:
    report = validate_data(SHIPPED_DATA)
    groups = {(s.value, s.group) for s in report.stats}
    assert ("benevolence", "first_person_question") in groups
    assert ("power", "uncontrolled") in groups
    assert len([s for s in report.stats if s.group.endswith(("scenario", "question"))]) == 40
    for s in report.stats:
        if s.group.endswith(("scenario", "question")):
            assert s.min_score is not None and s.min_score >= 0.5


# ------------------------------------------------------------------ corrupted copies

def test_missing_field_is_an_error_naming_file_and_line(data: Path) -> None:
    edit(data / "pairs/power.jsonl", 7, lambda r: {k: v for k, v in r.items() if k != "negative"})
    assert has_error(errors(data), "pairs/power.jsonl:7", "missing field(s) negative")


def test_duplicate_pair_is_an_error_naming_the_first_occurrence(data: Path) -> None:
    path = data / "pairs/benevolence.jsonl"
    first = record(path, 3)
    edit(path, 9, lambda r: {**r, "positive": first["positive"], "negative": first["negative"]})
    assert has_error(errors(data), "pairs/benevolence.jsonl:9",
                     "duplicate pair (same as pairs/benevolence.jsonl:3)")


def test_negative_identical_to_positive_is_an_error(data: Path) -> None:
    edit(data / "pairs/security.jsonl", 12, lambda r: {**r, "negative": r["positive"]})
    assert has_error(errors(data), "pairs/security.jsonl:12", "negative identical to positive")


def test_value_name_not_matching_the_file_name_is_an_error(data: Path) -> None:
    edit(data / "pairs/hedonism.jsonl", 4, lambda r: {**r, "value": "power"})
    assert has_error(errors(data), "pairs/hedonism.jsonl:4",
                     "value 'power' does not match the file name ('hedonism')")


def test_unknown_value_is_an_error(data: Path) -> None:
    edit(data / "dilemmas/tradition.jsonl", 2, lambda r: {**r, "competing": "greed"})
    edit(data / "pairs/tradition.jsonl", 5, lambda r: {**r, "value": "greed"})
    errs = errors(data)
    assert has_error(errs, "dilemmas/tradition.jsonl:2", "unknown competing value 'greed'")
    assert has_error(errs, "pairs/tradition.jsonl:5", "unknown value 'greed'")


def test_malformed_json_line_is_an_error_and_the_other_lines_are_still_checked(
        data: Path) -> None:
    path = data / "pairs/stimulation.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[10] = lines[10][:-5]                                   # line 11 cut short
    lines[20] = lines[20].replace('"negative"', '"negativ"')     # line 21 misses a field
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    errs = errors(data)
    assert has_error(errs, "pairs/stimulation.jsonl:11", "not valid JSON")
    assert has_error(errs, "pairs/stimulation.jsonl:21", "missing field(s) negative")


def test_duplicate_id_is_an_error(data: Path) -> None:
    edit(data / "uncontrolled/power.jsonl", 6, lambda r: {**r, "id": "power-nc-002"})
    assert has_error(errors(data), "uncontrolled/power.jsonl:6",
                     "duplicate id 'power-nc-002' (first at uncontrolled/power.jsonl:2)")


def test_block_that_does_not_match_the_id_range_is_out_of_order(data: Path) -> None:
    edit(data / "pairs/achievement.jsonl", 30, lambda r: {**r, "block": "first_person_scenario"})
    errs = errors(data)
    assert has_error(errs, "pairs/achievement.jsonl:30", "out of order")
    assert has_error(errs, "pairs/achievement.jsonl", "has 26 usable pairs, expected 25")


def test_question_without_a_question_mark_is_an_error(data: Path) -> None:
    path = data / "pairs/universalism.jsonl"
    edit(path, 60, lambda r: {**r, "negative": r["negative"].rstrip("?") + "."})
    assert has_error(errors(data), "pairs/universalism.jsonl:60",
                     "negative in a question block must end with '?'")


def test_pair_that_is_not_context_controlled_is_an_error(data: Path) -> None:
    edit(data / "pairs/conformity.jsonl", 2, lambda r: {
        **r, "negative": "Quarterly rainfall figures for coastal towns were published on "
                         "Monday by officials."})
    assert has_error(errors(data), "pairs/conformity.jsonl:2", "not context-controlled")


def test_length_ratio_outside_range_is_an_error(data: Path) -> None:
    edit(data / "pairs/tradition.jsonl", 3, lambda r: {
        **r, "negative": r["positive"].rstrip(".") + ", and then did the exact opposite of "
                         "everything described so far, every single day, for many long years."})
    assert has_error(errors(data), "pairs/tradition.jsonl:3", "length ratio")


def test_near_duplicate_positives_of_one_value_are_an_error(data: Path) -> None:
    path = data / "pairs/self-direction.jsonl"
    first = record(path, 1)
    edit(path, 8, lambda r: {**r, "positive": first["positive"].replace("I ", "I really ", 1),
                             "negative": first["negative"].replace("I ", "I really ", 1)})
    errs = errors(data)
    assert has_error(errs, "pairs/self-direction.jsonl:8",
                     "positive nearly duplicates pairs/self-direction.jsonl:1")
    stats = {(s.value, s.group): s for s in validate_data(data).stats}
    assert stats[("self-direction", "first_person_scenario")].near_duplicates == 1


def test_missing_pairs_fail_the_block_count(data: Path) -> None:
    edit(data / "pairs/power.jsonl", 100, lambda r: None)
    assert has_error(errors(data), "pairs/power.jsonl",
                     "block 'third_person_question' has 24 usable pairs, expected 25")


def test_missing_file_is_an_error(data: Path) -> None:
    (data / "dilemmas/benevolence.jsonl").unlink()
    assert has_error(errors(data), "dilemmas/benevolence.jsonl", "missing file")


def test_uncontrolled_pairs_that_share_their_context_are_an_error(data: Path) -> None:
    path = data / "uncontrolled/security.jsonl"
    for n in range(1, 51):
        edit(path, n, lambda r: {**r, "negative": "Honestly, " + r["positive"]})
    assert has_error(errors(data), "uncontrolled/security.jsonl",
                     "uncontrolled pairs look context-controlled")


def test_dilemma_repeating_a_training_sentence_is_leakage(data: Path) -> None:
    training = record(data / "pairs/benevolence.jsonl", 5)["positive"]
    edit(data / "dilemmas/power.jsonl", 3, lambda r: {**r, "prompt": training + " Why?"})
    assert has_error(errors(data), "dilemmas/power.jsonl:3",
                     "leaks training data: similarity")


def test_gate_query_duplicating_a_dilemma_is_an_error(data: Path) -> None:
    dilemma = record(data / "dilemmas/stimulation.jsonl", 4)["prompt"]
    edit(data / "gate/unrelated_queries.jsonl", 1, lambda r: {**r, "prompt": dilemma})
    assert has_error(errors(data), "gate/unrelated_queries.jsonl:1",
                     "gate query duplicates dilemma dilemmas/stimulation.jsonl:4")


def test_mcq_needs_exactly_four_options_and_an_answer_among_them(data: Path) -> None:
    path = data / "gate/mcq.jsonl"
    edit(path, 1, lambda r: {**r, "options": {k: r["options"][k] for k in "ABC"}})
    edit(path, 2, lambda r: {**r, "answer": "E"})
    errs = errors(data)
    assert has_error(errs, "gate/mcq.jsonl:1", "needs exactly 4 options A-D")
    assert has_error(errs, "gate/mcq.jsonl:2", "answer 'E' is not one of the options")


# ------------------------------------------------------------------ building blocks

def test_pair_checks_accept_a_context_controlled_pair_and_name_each_failure() -> None:
    ok = pair_problems("I offered to carry my neighbour's groceries up the stairs.",
                       "I refused to carry my neighbour's groceries up the stairs.",
                       "first_person_scenario")
    assert ok == []
    assert pair_problems("Same words here.", "same words, here", "first_person_scenario") == [
        "negative identical to positive"]
    question = pair_problems("Should I help her move?", "Should I let her move alone.",
                             "first_person_question")
    assert question == ["negative in a question block must end with '?'"]


def test_similarity_prefilter_never_misses_a_pair_above_the_threshold() -> None:
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(12)]
    seqs = [[rng.choice(vocab) for _ in range(rng.randint(1, 10))] for _ in range(150)]
    for threshold in (0.3, 0.6, 0.8):
        found = set(_candidates(seqs, seqs, threshold))
        for i, a in enumerate(seqs):
            for j, b in enumerate(seqs):
                if token_similarity(a, b) > threshold:
                    assert (i, j) in found


# ------------------------------------------------------------------ CLI

def test_cli_validate_prints_the_stats_table_and_succeeds_on_shipped_data() -> None:
    from conva_mlx.cli.main import cli

    result = CliRunner().invoke(cli, ["data", "validate"])
    assert result.exit_code == 0, result.output
    assert "first_person_question" in result.output
    assert "mean ctx" in result.output
    assert "0 error(s)" in result.output


def test_cli_validate_fails_on_a_corrupt_copy_with_one_error_line_and_no_traceback(
        data: Path) -> None:
    from conva_mlx.cli.main import cli

    edit(data / "pairs/power.jsonl", 7, lambda r: {**r, "negative": r["positive"]})
    result = CliRunner().invoke(cli, ["data", "validate", str(data)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "pairs/power.jsonl:7: negative identical to positive" in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "1 error(s)" in error_lines[0]


def test_cli_validate_json_lists_every_error(data: Path) -> None:
    from conva_mlx.cli.main import cli

    edit(data / "pairs/hedonism.jsonl", 1, lambda r: {k: v for k, v in r.items() if k != "id"})
    result = CliRunner().invoke(cli, ["data", "validate", str(data), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert {"where": "pairs/hedonism.jsonl:1", "message": "missing field(s) id"} in \
        report["errors"]
    assert len(report["stats"]) == 60


# ------------------------------------------------------------------ choices

CHOICE_RULES = (  # (value_action, competing_action, words in the error)
    ("You should help.", "You should stay home tonight and rest.", "has 3 words"),
    ("You should stay late tonight and help her finish the long quarterly report "
     "for the team.", "You should go home.", "words (allowed"),
    ("You should help her with the report tonight.",
     "You should go home and relax with a long hot bath and dinner out.", "differ by more"),
    ("You should show her kindness and help tonight.",
     "You should keep your own evening plans.", "names a value (benevolence)"),
    ("You should probably stay late and help her.",
     "You should keep your evening free to rest.", "hedges"),
    ("You should do the right thing and help her.",
     "You should keep your evening free to rest.", "judges the choice"),
    ("Stay late and help her finish the report.",
     "You should keep your evening free to rest.", "open differently"),
    ("You should help her finish the report.", "You should help her finish the report.",
     "the same"),
)


@pytest.mark.parametrize("value_action,competing_action,message", CHOICE_RULES)
def test_each_choice_rule_catches_a_bad_row(data: Path, value_action: str,
                                            competing_action: str, message: str) -> None:
    path = data / "choices" / "benevolence.jsonl"
    edit(path, 2, lambda r: {**r, "value_action": value_action,
                             "competing_action": competing_action})
    assert has_error(errors(data), "choices/benevolence.jsonl:2", message), errors(data)


def test_choices_must_cover_every_dilemma_once_and_name_real_ids(data: Path) -> None:
    path = data / "choices" / "power.jsonl"
    first = record(path, 1)
    edit(path, 1, lambda r: None)  # dilemma power-d-001 loses its actions
    errs = errors(data)
    assert has_error(errs, "choices/power.jsonl", "no actions for 1 dilemma(s): power-d-001")
    edit(path, 1, lambda r: {**r, "id": "power-d-999"})
    assert has_error(errors(data), "choices/power.jsonl:1", "not a dilemma of power")
    edit(path, 3, lambda r: {**first, "id": record(path, 2)["id"]})
    assert has_error(errors(data), "choices/power.jsonl:3", "duplicate id")


def test_an_action_repeated_across_dilemmas_is_an_error(data: Path) -> None:
    path = data / "choices" / "tradition.jsonl"
    edit(path, 5, lambda r: {**r, "value_action": record(path, 4)["value_action"],
                             "competing_action": record(path, 4)["competing_action"]})
    assert has_error(errors(data), "choices/tradition.jsonl:5", "repeats an action")


def test_a_data_directory_without_choices_only_warns(data: Path) -> None:
    shutil.rmtree(data / "choices")
    report = validate_data(data)
    assert report.ok and any(w.where == "choices" for w in report.warnings)
