"""`conva-mlx serve`: a real server on 127.0.0.1, the real `openai` client, the default model.

Replies are compared with `SteeringSession.generate` in this process (what `conva-mlx
generate` runs) and with plain mlx-lm, token for token (greedy)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conva_mlx.models.loading import LoadedModel
from conva_mlx.packs.pack import Pack
from conva_mlx.steering import (
    CHAT_SAMPLING,
    DEFAULT_METHOD,
    GenOptions,
    SteerConfig,
    SteeringSession,
)
from tests.local_servers import free_port, running_server

KEY = "test-key-not-secret"
VALUED = "My neighbour asked me to help her move house this weekend. Should I?"
OTHER = "What is the capital of France?"
TOKENS = 24


@pytest.fixture(scope="module")
def server(small_pack_dir: Path) -> Iterator[str]:
    port = free_port()
    os.environ["CONVA_TEST_SERVE_KEY"] = KEY
    cmd = [str(Path(sys.executable).parent / "conva-mlx"), "serve", "--pack", str(small_pack_dir),
           "--port", str(port), "--api-key-env", "CONVA_TEST_SERVE_KEY", "--max-batch", "16",
           "--max-tokens-cap", "512"]
    with running_server(cmd, f"http://127.0.0.1:{port}/health", "conva-mlx serve"):
        yield f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def client(server: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=server, api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def session(default_lm: LoadedModel, small_pack: Pack) -> SteeringSession:
    return SteeringSession(default_lm, small_pack)


def _ask(client: Any, prompt: str, steering: dict[str, Any] | None,
         max_tokens: int = TOKENS, **extra: Any) -> Any:
    body = {**({"steering": steering} if steering is not None else {}), **extra}
    return client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens, temperature=0, extra_body=body or None)


def _served(max_tokens: int) -> GenOptions:
    """What the server decodes with when a request names only max_tokens and temperature 0:
    the chat's default (greedy with a repetition penalty)."""
    return dataclasses.replace(CHAT_SAMPLING, max_tokens=max_tokens)


def _cfg(steering: dict[str, Any]) -> SteerConfig:
    values = [f"{v}:{p}" for v, p in steering.get("values", {}).items()]
    return SteerConfig(values, method=steering.get("method", DEFAULT_METHOD),
                       mode=steering.get("mode", "prompt"), gate=steering.get("gate", True))


CASES = [
    {"values": {"benevolence": 0.95}, "gate": False},
    {"values": {"benevolence": 0.97}, "mode": "token", "gate": False},
    {"values": {"power": 0.95}, "method": "caa"},
    {"values": {"benevolence": 0.95}, "method": "ica"},
    {"values": {"power": 0.9}},
    {"method": "none"},
]


@pytest.mark.parametrize("steering", CASES, ids=lambda s: json.dumps(s, sort_keys=True))
def test_replies_equal_the_session_token_for_token(client: Any, session: SteeringSession,
                                                   steering: dict[str, Any]) -> None:
    reply = _ask(client, VALUED, steering)
    want = session.generate(VALUED, _cfg(steering), _served(TOKENS))
    assert reply.choices[0].message.content == want.text
    assert reply.usage.completion_tokens == len(want.tokens)
    conva = reply.model_extra["conva"]
    assert conva["method"] == want.method and bool(conva["layers"]) == want.steered
    # per block the same push as the session's (token mode: averaged over the same positions,
    # the prompt's and every generated one, by the engine's own token-mode hook)
    assert [layer["index"] for layer in conva["layers"]] == [x.index for x in want.layers]
    assert [layer["delta_norm"] for layer in conva["layers"]] == pytest.approx(
        [x.delta_norm for x in want.layers], rel=1e-3, abs=1e-5)
    if want.gate.used:
        assert conva["gate"]["score"] == pytest.approx(want.gate.score, abs=1e-5)


def test_method_none_is_plain_mlx_lm(client: Any, default_lm: LoadedModel) -> None:
    from mlx_lm import generate

    prompt = default_lm.chat_prompt([{"role": "user", "content": VALUED}])
    plain = generate(default_lm.model, default_lm.tokenizer, prompt, max_tokens=TOKENS)
    unpenalised = _ask(client, VALUED, {"method": "none"}, repetition_penalty=1)
    assert unpenalised.choices[0].message.content == plain


def test_a_closed_gate_gives_the_unsteered_reply(client: Any) -> None:
    gated = _ask(client, OTHER, {"values": {"benevolence": 0.95}})
    assert gated.model_extra["conva"]["gate"]["open"] is False
    assert gated.model_extra["conva"]["layers"] == []
    plain = _ask(client, OTHER, {"method": "none"})
    assert gated.choices[0].message.content == plain.choices[0].message.content


def test_streaming_gives_the_same_text_then_diagnostics_and_usage(client: Any) -> None:
    steering = {"values": {"benevolence": 0.95}, "gate": False}
    whole = _ask(client, VALUED, steering).choices[0].message.content
    stream = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": VALUED}], max_tokens=TOKENS,
        temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"steering": steering})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].model_extra["conva"]["layers"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_completions_endpoint_and_models_and_steering_info(server: str, client: Any) -> None:
    done = client.completions.create(model="default", prompt="The capital of France is",
                                     max_tokens=5, temperature=0)
    assert done.choices[0].text and done.usage.completion_tokens <= 5
    assert [m.id for m in client.models.list().data] == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
    info = _get(server, "/v1/steering")
    assert set(info["values"]) == {"benevolence", "power"} and info["gate"]["threshold"] > 0


def test_sixteen_concurrent_mixed_clients_each_get_their_own_reply(
        client: Any, session: SteeringSession) -> None:
    prompts = [VALUED, OTHER, "Should I lend my savings to my brother?",
               "I could take a promotion that means managing my friends. Should I?"]
    steerings: list[dict[str, Any]] = [
        {"method": "none"}, {"values": {"benevolence": 0.95}, "gate": False},
        {"values": {"power": 0.95}, "gate": False}, {"values": {"power": 0.9}},
        {"values": {"benevolence": 0.97}, "mode": "token", "gate": False},
        {"values": {"power": 0.95}, "method": "caa"}]
    jobs = [(prompts[i % 4], steerings[i % 6], 12 + i) for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda j: _ask(client, j[0], j[1], j[2]), jobs))
    for (prompt, steering, n), reply in zip(jobs, replies):
        want = session.generate(prompt, _cfg(steering), _served(n))
        assert reply.choices[0].message.content == want.text, (prompt, steering)


def _connect(server: str, timeout: float = 120) -> tuple[http.client.HTTPConnection, str]:
    url = urllib.parse.urlsplit(server)
    return http.client.HTTPConnection(url.hostname or "", url.port, timeout=timeout), url.path


def _send(server: str, body: Any, key: str | None = KEY, raw: bytes | None = None,
          endpoint: str = "chat/completions", timeout: float = 120) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else json.dumps(body).encode()
    conn, path = _connect(server, timeout)
    conn.request("POST", f"{path}/{endpoint}", body=data, headers=headers)
    resp = conn.getresponse()
    out = resp.status, resp.read()
    conn.close()
    return out


def _post(server: str, body: Any, key: str | None = KEY, raw: bytes | None = None,
          endpoint: str = "chat/completions") -> tuple[int, dict[str, Any]]:
    status, data = _send(server, body, key, raw, endpoint)
    return status, json.loads(data)


def _get(server: str, path: str, key: str | None = KEY) -> dict[str, Any]:
    conn, base = _connect(server)
    conn.request("GET", base.removesuffix("/v1") + path,
                 headers={"Authorization": f"Bearer {key}"} if key else {})
    out = json.loads(conn.getresponse().read())
    conn.close()
    return out


def _msg(**extra: Any) -> dict[str, Any]:
    return {"model": "default", "messages": [{"role": "user", "content": VALUED}],
            "max_tokens": 4, **extra}


BAD = [
    ("malformed JSON", None, b"{not json", "not valid JSON", 400),
    ("missing messages", {"model": "m"}, None, "'messages' is required", 400),
    ("unknown value", _msg(steering={"values": {"kindness": 0.9}}), None,
     "unknown value 'kindness'", 400),
    ("P0 out of range", _msg(steering={"values": {"benevolence": 1.5}}), None,
     "P0 must be in [0.5, 1)", 400),
    ("unknown method", _msg(steering={"values": {"benevolence": 0.9}, "method": "magic"}),
     None, "unknown method 'magic'", 400),
    ("value not in the pack", _msg(steering={"values": {"tradition": 0.9}}), None,
     "not in this pack", 400),
    ("max_tokens over the cap", _msg(max_tokens=100000), None, "at most 512", 400),
    ("prompt over the context", {"messages": [{"role": "user", "content": "word " * 9000}]},
     None, "longer than the model's context", 400),
    # --- types at every level, fields this server does not implement -------------------
    ("a list inside steering.values", _msg(steering={"values": [["a"]]}), None,
     "'steering.values' as a list must hold value names", 400),
    ("an object inside steering.values", _msg(steering={"values": [{"a": 1}]}), None,
     "'steering.values' as a list must hold value names", 400),
    ("a number inside steering.away", _msg(steering={"away": [1]}), None,
     "'steering.away' as a list must hold value names", 400),
    ("a string P0", _msg(steering={"values": {"benevolence": "high"}}), None,
     "the level for 'benevolence' must be a number", 400),
    ("a NaN P0", None, json.dumps(_msg(steering={"values": {"benevolence": float("nan")}}))
     .encode(), "P0 must be in [0.5, 1), got nan", 400),
    ("a string strength", _msg(steering={"values": ["benevolence"], "strength": "x"}), None,
     "'steering.strength' must be a number", 400),
    ("a strength out of range", _msg(steering={"values": ["benevolence"], "strength": 9}),
     None, "strength must be in [0, 8]", 400),
    ("steering.method a list", _msg(steering={"method": ["conva"]}), None,
     "'steering.method' must be a string", 400),
    ("steering.mode an object", _msg(steering={"mode": {}}), None,
     "'steering.mode' must be a string", 400),
    ("n 2", _msg(n=2), None, "'n' must be 1", 400),
    ("n '1'", _msg(n="1"), None, "'n' must be 1", 400),
    ("n true", _msg(n=True), None, "'n' must be 1", 400),
    ("logprobs true", _msg(logprobs=True), None, "'logprobs' must be false", 400),
    ("top_logprobs 3", _msg(top_logprobs=3), None, "'top_logprobs' must be 0", 400),
    ("presence_penalty 0.5", _msg(presence_penalty=0.5), None, "'presence_penalty' must be 0",
     400),
    ("tools", _msg(tools=[{"type": "function"}]), None, "'tools' must be absent", 400),
    ("stream 'yes'", _msg(stream="yes"), None, "'stream' must be true or false", 400),
    ("include_usage 1", _msg(stream=True, stream_options={"include_usage": 1}), None,
     "'stream_options.include_usage' must be true or false", 400),
    ("a content part whose text is a number",
     _msg(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]), None,
     "messages[0].content[0].text must be a string", 400),
    ("an image content part", _msg(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]), None,
     "messages[0].content[0] must be a text part", 400),
    ("seed beyond 64 bits", _msg(seed=2**70), None, "'seed' must be between", 400),
    ("model a number", _msg(model=5), None, "'model' must be a string", 400),
    ("stop false", _msg(stop=False), None, "'stop' must be a string", 400),
    ("a body nested 100000 deep", None, b"[" * 100000 + b"]" * 100000,
     "nested too deeply", 400),
]


@pytest.mark.parametrize(("body", "raw", "message", "status"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_requests_are_clear_errors_and_the_server_keeps_serving(
        server: str, body: Any, raw: bytes | None, message: str, status: int) -> None:
    code, answer = _post(server, body, raw=raw)
    assert code == status, answer
    err = answer["error"]
    assert message in err["message"] and err["type"] == "invalid_request_error"
    assert _get(server, "/health")["status"] == "ok"


JSON_VALUES: list[Any] = [None, True, False, 0, 1, -1, 2.5, 1e308, 2**70, "", "x",
                          "benevolence", [], ["x"], [1], [["a"]], [{"a": 1}], {}, {"a": 1},
                          {"benevolence": 0.9}]
CHAT_BASE = {"model": "default", "messages": [{"role": "user", "content": OTHER}],
             "max_tokens": 1, "steering": {"method": "none"}}
COMPLETION_BASE = {"model": "default", "prompt": "The capital of France is", "max_tokens": 1}
TOP_FIELDS = ["model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
              "repetition_penalty",
              "stop", "stream", "stream_options", "n", "best_of", "logprobs", "top_logprobs",
              "echo", "suffix", "presence_penalty", "frequency_penalty", "logit_bias",
              "tools", "steering"]
CHAT_FIELDS = [*TOP_FIELDS, "messages", "messages.0.role", "messages.0.content",
               "steering.values", "steering.away", "steering.method", "steering.mode",
               "steering.gate", "steering.instruct", "stream_options.include_usage"]


def _with(base: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(base))
    *parents, last = field.split(".")
    node: Any = body
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[int(last) if isinstance(node, list) else last] = value
    return body


@pytest.mark.parametrize(("endpoint", "base", "fields"), [
    ("chat/completions", CHAT_BASE, CHAT_FIELDS),
    ("completions", COMPLETION_BASE, [*TOP_FIELDS, "prompt"])], ids=["chat", "completions"])
def test_every_json_type_at_every_field_is_a_reply_or_a_400_naming_the_field(
        server: str, endpoint: str, base: dict[str, Any], fields: list[str]) -> None:
    outcomes: dict[int, int] = {}
    for field in fields:
        for value in JSON_VALUES:
            status, data = _send(server, _with(base, field, value), endpoint=endpoint)
            outcomes[status] = outcomes.get(status, 0) + 1
            where = f"{endpoint} {field}={json.dumps(value)}"
            assert status in (200, 400), f"{where}: {status} {data[:300]!r}"
            if status == 400:
                err = json.loads(data)["error"]
                assert err["type"] == "invalid_request_error", where
                assert (err["param"] or "").split(".")[0] == field.split(".")[0], \
                    f"{where}: {err}"
    assert outcomes[200] > 50 and outcomes[400] > 200, outcomes
    assert _get(server, "/health") == {"status": "ok", "active_requests": 0}


def test_n_and_logprobs_from_the_openai_client(client: Any) -> None:
    import openai

    ok = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": OTHER}], max_tokens=2, n=1,
        logprobs=False, extra_body={"steering": {"method": "none"}})
    assert len(ok.choices) == 1 and ok.choices[0].logprobs is None
    for extra in ({"n": 2}, {"logprobs": True, "top_logprobs": 2}):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="default", messages=[{"role": "user", "content": OTHER}], max_tokens=2,
                **extra)
        assert caught.value.body["param"] in extra  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="default", prompt="Hi", max_tokens=2, logprobs=2)
    assert refused.value.body["param"] == "logprobs"  # type: ignore[index]
    sampled = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": OTHER}], max_tokens=2,
        temperature=0.7, seed=-1, extra_body={"steering": {"method": "none"}})
    assert sampled.choices[0].message.content


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_a_missing_or_wrong_key_is_refused(server: str, key: str | None) -> None:
    code, answer = _post(server, _msg(), key=key)
    assert code == 401 and "API key" in answer["error"]["message"]
    assert KEY not in json.dumps(answer)


def test_a_non_streaming_client_that_gives_up_frees_its_row(server: str) -> None:
    """The same long request twice: kept, it runs to max_tokens; abandoned after a second,
    its row is gone long before that."""
    body = {"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 500, "temperature": 0,
            "repetition_penalty": 1}  # counting on: no penalty for repeating commas
    start = time.time()
    # 500 tokens: minutes on a machine that other jobs keep busy, hence the long time-out
    status, data = _send(server, body, endpoint="completions", timeout=900)
    kept = time.time() - start
    assert status == 200 and json.loads(data)["choices"][0]["finish_reason"] == "length"
    assert kept > 4, f"the control request took only {kept:.1f} s"
    settle = time.time() + 10  # the finished row leaves the batch at the end of its step
    while _get(server, "/health")["active_requests"] and time.time() < settle:
        time.sleep(0.05)
    assert _get(server, "/health")["active_requests"] == 0, "a row was left from earlier"
    conn, path = _connect(server)
    sent = time.time()
    conn.request("POST", f"{path}/completions", body=json.dumps(body).encode(),
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    readings: list[tuple[float, int]] = []  # (seconds since sending, active rows)
    deadline = sent + max(120.0, kept)  # a busy machine may be slow to admit it
    while time.time() < deadline:
        readings.append((round(time.time() - sent, 2), _get(server, "/health")["active_requests"]))
        if readings[-1][1]:
            break
        time.sleep(0.05)
    started = readings[-1]
    assert started[1] == 1 and started[0] < kept / 3, \
        f"the request was not seen running early (control {kept:.1f} s): {readings[-5:]}"
    left = time.time()
    conn.close()  # give up without reading the reply
    while _get(server, "/health")["active_requests"] and time.time() - left < kept:
        time.sleep(0.05)
    freed = time.time() - left
    assert _get(server, "/health")["active_requests"] == 0
    assert freed < kept / 3, f"freed after {freed:.1f} s (a whole reply: {kept:.1f} s)"


def test_a_client_that_leaves_mid_stream_frees_its_row(server: str, client: Any) -> None:
    body = _msg(max_tokens=400, stream=True, steering={"values": {"benevolence": 0.95},
                                                       "gate": False})
    conn, path = _connect(server)
    conn.request("POST", f"{path}/chat/completions", body=json.dumps(body).encode(),
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline().startswith(b"data: ")  # the role chunk, then leave mid-stream
    conn.close()
    deadline = time.time() + 60
    while _get(server, "/health")["active_requests"] and time.time() < deadline:
        time.sleep(0.2)
    assert _get(server, "/health")["active_requests"] == 0
    assert _ask(client, OTHER, {"method": "none"}).choices[0].message.content


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "70000"], "Invalid value for '--port': 70000 is not in the range 1<=x<=65535"),
    (["--port", "-1"], "Invalid value for '--port': -1 is not in the range"),
    (["--host", "no-such-host.invalid"], "error: --host no-such-host.invalid: not an address"),
    (["--strength", "9"], "error: --strength: strength must be in [0, 8], got 9.0"),
    (["--port", "{taken}"], "error: cannot listen on 127.0.0.1:{taken} (Address already in "
                            "use); choose another --port"),
])
def test_serve_start_up_errors_are_one_clear_message(small_pack_dir: Path, args: list[str],
                                                     message: str) -> None:
    """Before the model loads: no traceback, no 'serving on', nothing listening."""
    import socket
    import subprocess

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        argv = [a.replace("{taken}", port) for a in args]
        start = time.time()
        proc = subprocess.run([str(Path(sys.executable).parent / "conva-mlx"), "serve",
                               "--pack", str(small_pack_dir), *argv], capture_output=True,
                              text=True, timeout=120)
    assert proc.returncode in (1, 2), proc.stderr
    assert message.replace("{taken}", port) in proc.stderr
    assert "Traceback" not in proc.stderr and "serving" not in proc.stderr
    assert time.time() - start < 60
