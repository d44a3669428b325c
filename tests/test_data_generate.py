"""Pair generation against a real, scripted OpenAI-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conva_mlx.data.choice_rules import CHOICE_FIELDS, action_pair_problems
from conva_mlx.data.generate import (
    GenerateConfig,
    extract_json_object,
    generate_pairs,
    parse_positives,
)
from conva_mlx.data.generate_choices import ChoicesConfig, generate_choices, parse_actions
from conva_mlx.data.validate import pair_problems
from conva_mlx.errors import ConvaError
from conva_mlx.values import load_values

SECRET = "sk-test-do-not-leak-1234"
NAMES = ("Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas",
         "Kemal", "Lena")
VERBS = ("paint", "repair", "clean", "decorate", "guard", "carry", "sort", "cook", "plant",
         "build", "wash", "light")
THINGS = ("fence", "boat", "kitchen", "garden", "library", "bicycle", "archive", "bakery",
          "orchard", "bridge", "van", "lanterns")
PLACES = ("school", "harbour", "clinic", "market", "temple", "stadium", "museum", "farm",
          "station", "festival", "shelter", "theatre")
WHEN = ("tonight", "tomorrow", "on Sunday", "at dawn", "next week", "this spring",
        "after lunch", "before winter", "on Friday", "in June", "at noon", "this weekend")
MALFORMED = "Sorry, I cannot answer in JSON today."


@dataclass
class Script:
    """What the fake server answers: overrides by request number, else well-formed answers."""

    overrides: dict[int, tuple[int, str]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    # choices: dilemma prompt -> answers by attempt (the last one repeats); else well-formed
    choice_answers: dict[str, list[str]] = field(default_factory=dict)
    made: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def positives(self, prompt: str) -> str:
        k = int(re.search(r"Write (\d+) new", prompt).group(1))  # type: ignore[union-attr]
        block = re.search(r"Block: (\w+)", prompt).group(1)  # type: ignore[union-attr]
        items = []
        for _ in range(k):
            i = self.made
            self.made += 1
            core = (f"{NAMES[i]} gladly {VERBS[i]} the {THINGS[i]} for the {PLACES[i]} "
                    f"{WHEN[i]}")
            text = f"Should {core}?" if block.endswith("question") else f"{core}."
            items.append({"setting": "community", "positive": text})
        body = json.dumps({"items": items})
        return f"Here they are:\n```json\n{body}\n```"

    def negative(self, prompt: str) -> str:
        positive = re.search(r"^Positive: (.*)$", prompt, re.M).group(1)  # type: ignore[union-attr]
        return json.dumps({"negative": positive.replace("gladly", "grudgingly")})

    def actions(self, dilemma: str, attempt: int) -> str:
        scripted = self.choice_answers.get(dilemma)
        if scripted:
            return scripted[min(attempt, len(scripted) - 1)]
        i = self.made % len(NAMES)
        self.made += 1
        return json.dumps({"value_action": f"You should {VERBS[i]} the {THINGS[i]} yourself "
                                           f"{WHEN[i]}.",
                           "competing_action": f"You should let {NAMES[i]} {VERBS[i]} the "
                                               f"{THINGS[i]} {WHEN[i]}."})

    def answer(self, body: dict[str, Any], auth: str | None) -> tuple[int, str]:
        with self.lock:
            n = len(self.requests)
            messages = body["messages"]
            prompt = messages[-1]["content"]
            first = messages[1]["content"]
            dilemma = ""
            if first.startswith("Dilemma: "):
                kind = "reask" if len(messages) > 2 else "choices"
                dilemma = first.splitlines()[0].removeprefix("Dilemma: ")
            else:
                kind = "negative" if "\nPositive: " in prompt else "positives"
            self.requests.append({"kind": kind, "auth": auth, "model": body.get("model"),
                                  "dilemma": dilemma, "messages": messages})
            if n in self.overrides:
                return self.overrides[n]
            if dilemma:
                return 200, self.actions(dilemma, sum(m["role"] == "assistant"
                                                      for m in messages))
            return 200, self.negative(prompt) if kind == "negative" else self.positives(prompt)

    def count(self, kind: str) -> int:
        return sum(r["kind"] == kind for r in self.requests)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        script: Script = self.server.script  # type: ignore[attr-defined]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, content = script.answer(body, self.headers.get("Authorization"))
        if status == 200:
            payload: dict[str, Any] = {
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                "model": body.get("model"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        else:
            payload = {"error": {"message": content or "slow down", "type": "rate_limit"}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    script = Script()
    httpd.script = script  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", script
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def config(url: str, out: Path, n: int, **kw: Any) -> GenerateConfig:
    return GenerateConfig(value="benevolence", n=n, out=out, base_url=url, model="scripted",
                          **kw)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def test_generates_validated_pairs_retrying_a_429_and_counting_a_malformed_answer(
        server: tuple[str, Script], tmp_path: Path) -> None:
    url, script = server
    # request 0: 429 (retried); 1: positives; 2: first negative is malformed (skipped)
    script.overrides = {0: (429, "slow down"), 2: (200, MALFORMED)}
    out, sleeps = tmp_path / "gen.jsonl", Sleeps()
    report = generate_pairs(config(url, out, 3), sleep=sleeps, show_progress=False)

    assert report.complete and report.written == 3
    assert report.retries == 1 and sleeps == [1.0]
    assert report.malformed == 1
    records = lines(out)
    assert len(records) == 3
    assert len({r["positive"] for r in records}) == 3
    assert [r["id"] for r in records] == ["benevolence-gen-001", "benevolence-gen-002",
                                          "benevolence-gen-003"]
    for r in records:
        assert r["value"] == "benevolence"
        assert pair_problems(r["positive"], r["negative"], r["block"]) == []
    assert {r["auth"] for r in script.requests} == {f"Bearer {SECRET}"}
    assert {r["model"] for r in script.requests} == {"scripted"}
    assert SECRET not in out.read_text() and SECRET not in report.summary()


def test_rerun_resumes_and_only_asks_for_the_missing_pairs(
        server: tuple[str, Script], tmp_path: Path) -> None:
    url, script = server
    out = tmp_path / "gen.jsonl"
    generate_pairs(config(url, out, 3), sleep=Sleeps(), show_progress=False)
    negatives_before = script.count("negative")

    report = generate_pairs(config(url, out, 5), sleep=Sleeps(), show_progress=False)

    assert (report.existing, report.written) == (3, 2)
    assert script.count("negative") - negatives_before == 2
    records = lines(out)
    assert len(records) == 5
    assert len({r["positive"] for r in records}) == 5
    assert len({r["id"] for r in records}) == 5
    blocks = [r["block"] for r in records]
    assert blocks[:3] == ["first_person_scenario"] * 3
    assert blocks[3:] == ["third_person_scenario"] * 2   # the emptiest block comes next

    again = generate_pairs(config(url, out, 5), sleep=Sleeps(), show_progress=False)
    assert again.written == 0 and len(lines(out)) == 5


def test_interrupted_run_keeps_every_finished_pair_and_resumes(
        server: tuple[str, Script], tmp_path: Path) -> None:
    url, _ = server
    out = tmp_path / "gen.jsonl"

    def interrupt(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_pairs(config(url, out, 4), sleep=Sleeps(), show_progress=False,
                       progress=interrupt)
    assert len(lines(out)) == 2
    with out.open("a") as f:                       # a write cut short by a crash
        f.write('{"id": "benevolence-gen-0')
    report = generate_pairs(config(url, out, 4), sleep=Sleeps(), show_progress=False)
    assert (report.existing, report.written) == (2, 2)
    records = lines(out)
    assert len(records) == 4 and len({r["positive"] for r in records}) == 4


def test_missing_api_key_is_one_clear_error(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ConvaError, match=r"^set OPENAI_API_KEY "):
        generate_pairs(config("http://127.0.0.1:9/v1", tmp_path / "o.jsonl", 2),
                       show_progress=False)
    with pytest.raises(ConvaError, match=r"^set MY_LLM_KEY "):
        generate_pairs(config("http://127.0.0.1:9/v1", tmp_path / "o.jsonl", 2,
                              api_key_env="MY_LLM_KEY"), show_progress=False)


def test_api_key_env_none_talks_to_a_local_server_without_a_key(
        server: tuple[str, Script], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, script = server
    monkeypatch.delenv("OPENAI_API_KEY")
    report = generate_pairs(config(url, tmp_path / "o.jsonl", 2, api_key_env="none"),
                            sleep=Sleeps(), show_progress=False)
    assert report.written == 2
    assert all(SECRET not in (r["auth"] or "") for r in script.requests)


def test_unreachable_server_is_one_clear_error_naming_the_url(tmp_path: Path) -> None:
    with socket.socket() as s:                     # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url, sleeps = f"http://127.0.0.1:{port}/v1", Sleeps()
    with pytest.raises(ConvaError, match=re.escape(f"cannot reach the server at {url} after 3")):
        generate_pairs(config(url, tmp_path / "o.jsonl", 2, max_retries=2), sleep=sleeps,
                       show_progress=False)
    assert sleeps == [1.0, 2.0]                    # exponential backoff


def test_server_that_keeps_failing_is_an_error_after_the_retries(
        server: tuple[str, Script], tmp_path: Path) -> None:
    url, script = server
    script.overrides = {i: (500, "boom") for i in range(10)}
    with pytest.raises(ConvaError, match=re.escape(f"{url} kept failing (HTTP 500) after 4")):
        generate_pairs(config(url, tmp_path / "o.jsonl", 2, max_retries=3), sleep=Sleeps(),
                       show_progress=False)
    assert len(script.requests) == 4


def test_model_answers_are_parsed_through_fences_and_prose() -> None:
    assert extract_json_object('Sure!\n```json\n{"negative": "x {y}"}\n```') == {
        "negative": "x {y}"}
    assert extract_json_object("no json {here} at all") is None
    assert parse_positives('{"items": [{"setting": "Work", "positive": " I  helped. "}, 3]}') \
        == [("work", "I helped.")]
    assert parse_positives('[{"positive": "I helped."}]') == [("", "I helped.")]
    assert parse_positives('{"items": []}') is None


def test_cli_generate_writes_pairs_and_reports_counts(
        server: tuple[str, Script], tmp_path: Path) -> None:
    from conva_mlx.cli.main import cli

    url, _ = server
    out = tmp_path / "cli.jsonl"
    result = CliRunner().invoke(cli, ["data", "generate", "--value", "benevolence", "--n", "2",
                                      "--out", str(out), "--base-url", url, "--model", "m"])
    assert result.exit_code == 0, result.output
    assert "2/2 benevolence pairs" in result.output and "0 malformed" in result.output
    assert len(lines(out)) == 2
    assert SECRET not in result.output


def test_cli_generate_without_a_key_exits_1_with_one_error_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conva_mlx.cli.main import cli

    monkeypatch.delenv("OPENAI_API_KEY")
    result = CliRunner().invoke(cli, ["data", "generate", "--value", "power", "--n", "2",
                                      "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert [ln for ln in result.output.splitlines() if ln.startswith("error:")] == [
        "error: set OPENAI_API_KEY to your API key (or --api-key-env NAME to read another "
        "variable, or --api-key-env none for a local server)"]


# ---------------------------------------------------------------- choice data

DILEMMAS = [
    {"id": "my-d-001", "value": "benevolence", "competing": "achievement",
     "prompt": "My friend is moving house on the day of my exam revision group. Should I help?"},
    {"id": "my-d-002", "value": "power", "competing": "universalism",
     "prompt": "Should Ana take the directorship at a mine that will damage a river?"},
    {"id": "my-d-003", "value": "tradition", "competing": "hedonism",
     "prompt": "Should I skip the family harvest festival to go to a beach party?"},
    {"id": "my-d-004", "value": "security", "competing": "stimulation",
     "prompt": "Should Tom keep his steady job or join a friend's risky startup abroad?"},
]


def actions(value_action: str, competing_action: str) -> str:
    return json.dumps({"value_action": value_action, "competing_action": competing_action})


def write_dilemmas(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def choices_config(url: str, tmp_path: Path, rows: list[dict[str, Any]] | None = None,
                   **kw: Any) -> ChoicesConfig:
    dilemmas = write_dilemmas(tmp_path / "dilemmas.jsonl", DILEMMAS if rows is None else rows)
    return ChoicesConfig(dilemmas=dilemmas, out=tmp_path / "choices.jsonl", base_url=url,
                         model="scripted", **kw)


def asked(script: Script, *kinds: str) -> list[str]:
    """The dilemma prompt of each request of these kinds, in order."""
    return [r["dilemma"] for r in script.requests if r["kind"] in kinds]


def test_choices_writes_a_valid_row_for_every_dilemma(
        server: tuple[str, Script], tmp_path: Path) -> None:
    url, script = server
    script.overrides = {1: (429, "slow down")}
    cfg, sleeps = choices_config(url, tmp_path), Sleeps()
    report = generate_choices(cfg, sleep=sleeps, show_progress=False)

    assert report.complete and (report.written, report.existing) == (4, 0)
    assert (report.requests, report.retries, report.reasked) == (4, 1, 0)
    assert report.rejected == {} and report.malformed == 0
    rows = lines(cfg.out)
    assert [r["id"] for r in rows] == [d["id"] for d in DILEMMAS]
    for r in rows:
        assert tuple(r) == CHOICE_FIELDS
        assert action_pair_problems(r["value_action"], r["competing_action"]) == []
    prompts = [d["prompt"] for d in DILEMMAS]
    assert asked(script, "choices") == [prompts[0], prompts[1], *prompts[1:]]  # 429 retried
    assert sleeps == [1.0]
    first = script.requests[0]["messages"]
    assert [m["role"] for m in first] == ["system", "user"]
    prompt = first[1]["content"]
    values = load_values()
    assert values["benevolence"].definition in prompt
    assert values["achievement"].definition in prompt
    assert "4 to 14 words" in prompt and "within 30%" in prompt
    assert '"value_action"' in prompt and '"competing_action"' in prompt
    assert {r["auth"] for r in script.requests} == {f"Bearer {SECRET}"}
    assert SECRET not in cfg.out.read_text() and SECRET not in report.summary()
    assert "4/4 dilemmas" in report.summary()


def test_choices_bad_answer_is_sent_back_with_its_problems_then_accepted(
        server: tuple[str, Script], tmp_path: Path) -> None:
    url, script = server
    bad = actions("Maybe you should help your friend move house.",
                  "Go to the revision group and study for the exam.")
    good = actions("You should help your friend carry the boxes.",
                   "You should go to the revision group instead.")
    script.choice_answers = {DILEMMAS[0]["prompt"]: [bad, good]}
    cfg = choices_config(url, tmp_path, DILEMMAS[:1])
    report = generate_choices(cfg, sleep=Sleeps(), show_progress=False)

    assert report.written == 1 and report.reasked == 1 and report.requests == 2
    assert report.rejected == {}
    assert lines(cfg.out) == [{"id": "my-d-001", **json.loads(good)}]
    follow = script.requests[1]["messages"]
    assert [m["role"] for m in follow] == ["system", "user", "assistant", "user"]
    assert follow[2]["content"] == bad                # the model sees what it answered
    listed = follow[3]["content"]
    assert 'value_action hedges: "maybe"' in listed
    assert "open differently ('maybe' vs 'go')" in listed
    assert "Answer with JSON only" in listed


def test_choices_dilemma_whose_answers_keep_failing_is_skipped_and_counted(
        server: tuple[str, Script], tmp_path: Path) -> None:
    url, script = server
    names_value = actions("Tom should keep his job for the security it brings.",
                          "Tom should join the startup abroad with his friend.")
    script.choice_answers = {DILEMMAS[3]["prompt"]: [names_value],
                             DILEMMAS[2]["prompt"]: ["no json here", MALFORMED]}
    cfg = choices_config(url, tmp_path, attempts=3)
    report = generate_choices(cfg, sleep=Sleeps(), show_progress=False)

    assert not report.complete
    assert (report.written, report.malformed) == (2, 3)
    assert report.rejected == {"names a value": 1, "malformed answers": 1}
    assert asked(script, "choices", "reask").count(DILEMMAS[3]["prompt"]) == 3
    assert asked(script, "choices", "reask").count(DILEMMAS[2]["prompt"]) == 3
    assert report.reasked == 4 and report.requests == 8
    assert [r["id"] for r in lines(cfg.out)] == ["my-d-001", "my-d-002"]
    last = [r for r in script.requests if r["dilemma"] == DILEMMAS[3]["prompt"]][-1]
    assert 'names a value (security): "security"' in last["messages"][-1]["content"]
    summary = report.summary()
    assert "2/4 dilemmas" in summary and "malformed answers 1, names a value 1" in summary


def test_choices_an_action_repeating_an_earlier_row_is_sent_back(
        server: tuple[str, Script], tmp_path: Path) -> None:
    url, script = server
    first = actions("You should help your friend carry the boxes.",
                    "You should go to the revision group instead.")
    fresh = actions("You should go to the festival with your family.",
                    "You should go to the beach party tonight.")
    repeat = actions("You should go to the festival with your family.",
                     "You should go to the revision group instead.")
    script.choice_answers = {DILEMMAS[0]["prompt"]: [first], DILEMMAS[2]["prompt"]: [repeat,
                                                                                      fresh]}
    cfg = choices_config(url, tmp_path, [DILEMMAS[0], DILEMMAS[2]])
    report = generate_choices(cfg, sleep=Sleeps(), show_progress=False)

    assert report.written == 2 and report.reasked == 1
    assert "competing_action repeats an action already written for my-d-001" in \
        script.requests[-1]["messages"][-1]["content"]
    assert lines(cfg.out)[1] == {"id": "my-d-003", **json.loads(fresh)}


def test_choices_interrupted_run_resumes_with_only_the_missing_dilemmas(
        server: tuple[str, Script], tmp_path: Path) -> None:
    url, script = server
    cfg = choices_config(url, tmp_path)

    def interrupt(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_choices(cfg, sleep=Sleeps(), show_progress=False, progress=interrupt)
    assert [r["id"] for r in lines(cfg.out)] == ["my-d-001", "my-d-002"]
    with cfg.out.open("a") as f:                   # a write cut short by a crash
        f.write('{"id": "my-d-003", "value_act')
    before = len(script.requests)

    report = generate_choices(cfg, sleep=Sleeps(), show_progress=False)
    assert (report.existing, report.written) == (2, 2) and report.complete
    assert [r["dilemma"] for r in script.requests[before:]] == [d["prompt"]
                                                                for d in DILEMMAS[2:]]
    assert [r["id"] for r in lines(cfg.out)] == [d["id"] for d in DILEMMAS]

    again = generate_choices(cfg, sleep=Sleeps(), show_progress=False)
    assert (again.existing, again.written, again.requests) == (4, 0, 0)
    assert len(script.requests) == before + 2


@pytest.mark.parametrize(("row", "message"), [
    ({"id": "x-1", "value": "power", "competing": "benevolence"}, r"missing: prompt"),
    ({"id": "x-1", "value": "powr", "competing": "benevolence", "prompt": "Should I?"},
     r"unknown value 'powr'"),
    ({"id": "x-1", "value": "power", "competing": "power", "prompt": "Should I?"},
     r"competing is the dilemma's own value 'power'"),
    ({"id": "my-d-001", "value": "power", "competing": "security", "prompt": "Should I?"},
     r":2: duplicate id 'my-d-001' \(first at line 1\)"),
])
def test_choices_bad_dilemmas_are_one_error_before_any_request(
        server: tuple[str, Script], tmp_path: Path, row: dict[str, Any], message: str) -> None:
    url, script = server
    cfg = choices_config(url, tmp_path, [DILEMMAS[0], row])
    with pytest.raises(ConvaError, match=message):
        generate_choices(cfg, sleep=Sleeps(), show_progress=False)
    assert script.requests == [] and not cfg.out.exists()


def test_choices_out_holding_rows_of_other_dilemmas_is_an_error(
        server: tuple[str, Script], tmp_path: Path) -> None:
    url, script = server
    cfg = choices_config(url, tmp_path)
    cfg.out.write_text(json.dumps({"id": "power-d-001", "value_action": "a b c d",
                                   "competing_action": "a c d e"}) + "\n")
    with pytest.raises(ConvaError, match=r"'power-d-001' is not a dilemma in .*another --out"):
        generate_choices(cfg, sleep=Sleeps(), show_progress=False)
    assert script.requests == []


def test_choice_answers_are_parsed_through_fences_and_prose() -> None:
    assert parse_actions('Sure:\n```json\n{"value_action": " You  help. ", '
                         '"competing_action": "You go."}\n```') == ("You help.", "You go.")
    assert parse_actions('{"value_action": "You help."}') is None
    assert parse_actions('{"value_action": "You help.", "competing_action": 3}') is None


def test_cli_generate_choices_writes_rows_and_reports_counts(
        server: tuple[str, Script], tmp_path: Path) -> None:
    from conva_mlx.cli.main import cli

    url, _ = server
    dilemmas = write_dilemmas(tmp_path / "d.jsonl", DILEMMAS[:2])
    out = tmp_path / "choices" / "mine.jsonl"
    result = CliRunner().invoke(cli, ["data", "generate", "--choices", "--dilemmas",
                                      str(dilemmas), "--out", str(out), "--base-url", url,
                                      "--model", "m", "--temp", "0.2"])
    assert result.exit_code == 0, result.output
    assert "2/2 dilemmas" in result.output and "0 rejected" in result.output
    assert [r["id"] for r in lines(out)] == ["my-d-001", "my-d-002"]
    assert SECRET not in result.output and SECRET not in out.read_text()


def test_cli_generate_choices_incomplete_exits_1_and_says_rerun(
        server: tuple[str, Script], tmp_path: Path) -> None:
    from conva_mlx.cli.main import cli

    url, script = server
    script.choice_answers = {DILEMMAS[1]["prompt"]: [actions(
        "Ana should take the directorship for its power.",
        "Ana should turn down the directorship to protect the river.")]}
    dilemmas = write_dilemmas(tmp_path / "d.jsonl", DILEMMAS[:2])
    out = tmp_path / "mine.jsonl"
    result = CliRunner().invoke(cli, ["data", "generate", "--choices", "--dilemmas",
                                      str(dilemmas), "--out", str(out), "--base-url", url,
                                      "--max-retries", "0"])
    assert result.exit_code == 1
    assert "1 rejected (names a value 1)" in result.output
    assert [ln for ln in result.output.splitlines() if ln.startswith("error:")] == [
        f"error: {out} has actions for 1 of 2 dilemmas; rerun to continue"]
    assert SECRET not in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--choices"], "error: --choices needs --dilemmas FILE.jsonl"),
    (["--choices", "--dilemmas", "D", "--value", "power", "--n", "3"],
     "error: --choices writes actions for the dilemmas in --dilemmas; --value, --n are for "
     "pairs only"),
    (["--choices", "--dilemmas", "D", "--batch-size", "2"],
     "error: --choices writes actions for the dilemmas in --dilemmas; --batch-size is for "
     "pairs only"),
    (["--dilemmas", "D", "--value", "power", "--n", "3"],
     "error: --dilemmas goes with --choices"),
    (["--value", "power"], "error: pairs need --value and --n"),
])
def test_cli_generate_choices_misuse_is_one_clear_error(
        tmp_path: Path, args: list[str], message: str) -> None:
    from conva_mlx.cli.main import cli

    dilemmas = write_dilemmas(tmp_path / "d.jsonl", DILEMMAS)
    args = [str(dilemmas) if a == "D" else a for a in args]
    out = tmp_path / "o.jsonl"
    result = CliRunner().invoke(cli, ["data", "generate", *args, "--out", str(out),
                                      "--base-url", "http://127.0.0.1:9/v1"])
    assert result.exit_code == 1, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message)
    assert "Traceback" not in result.output and not out.exists()


def test_cli_generate_choices_without_a_key_exits_1_before_any_request(
        server: tuple[str, Script], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conva_mlx.cli.main import cli

    url, script = server
    monkeypatch.delenv("OPENAI_API_KEY")
    dilemmas = write_dilemmas(tmp_path / "d.jsonl", DILEMMAS)
    result = CliRunner().invoke(cli, ["data", "generate", "--choices", "--dilemmas",
                                      str(dilemmas), "--out", str(tmp_path / "o.jsonl"),
                                      "--base-url", url])
    assert result.exit_code == 1
    assert "error: set OPENAI_API_KEY to your API key" in result.output
    assert script.requests == []
