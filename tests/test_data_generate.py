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

from conva_mlx.data.generate import (
    GenerateConfig,
    extract_json_object,
    generate_pairs,
    parse_positives,
)
from conva_mlx.data.validate import pair_problems
from conva_mlx.errors import ConvaError

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

    def answer(self, body: dict[str, Any], auth: str | None) -> tuple[int, str]:
        with self.lock:
            n = len(self.requests)
            prompt = body["messages"][-1]["content"]
            kind = "negative" if "\nPositive: " in prompt else "positives"
            self.requests.append({"kind": kind, "auth": auth, "model": body.get("model")})
            if n in self.overrides:
                return self.overrides[n]
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
