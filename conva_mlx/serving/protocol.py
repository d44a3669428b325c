"""The OpenAI wire format both ways: parse and check one request body (steering settings
out), and write the responses (whole, streamed chunks, usage, model list, steering info).

Every problem is a `RequestError` (HTTP 400 unless said otherwise) whose message says what
to fix; the server answers it in OpenAI's error shape and keeps serving."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from conva_mlx.errors import ConvaError
from conva_mlx.packs.pack import Pack
from conva_mlx.steering.config import (
    CHAT_SAMPLING,
    DEFAULT_METHOD,
    GATED_METHODS,
    MAX_REPETITION_PENALTY,
    METHODS,
    MODES,
    GenOptions,
    SteerConfig,
    Target,
)
from conva_mlx.steering.effects import expected_effects
from conva_mlx.steering.engine import PACK_METHODS, resolve_defaults
from conva_mlx.steering.reports import GenerationResult


class RequestError(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.kind = message, status, param, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": None}}


@dataclass
class Limits:
    max_tokens: int = 2048  # the largest max_tokens a request may ask for
    default_max_tokens: int = 256
    max_body_bytes: int = 1 << 20
    # decoding when a request does not say: the chat's (greedy, no repetition loops)
    sampling: GenOptions = field(default_factory=lambda: CHAT_SAMPLING)


@dataclass
class Defaults:
    """The server's steering when a request says nothing (`--values`)."""

    targets: list[Target] = field(default_factory=list)
    method: str = DEFAULT_METHOD
    # the calibrated push's strength for requests that give none; None: the pack's default
    strength: float | None = None
    # ICA's instruction with the gated push (`serve --instruct/--no-instruct`); None: the
    # pack's default
    instruct: bool | None = None

    def config(self) -> SteerConfig:
        if not self.targets:
            return SteerConfig(method="none")
        return SteerConfig(list(self.targets), method=self.method,  # type: ignore[arg-type]
                           strength=self.strength, instruct=self.instruct)

    def instructs(self, method: str) -> bool | None:
        """Whether a request naming `method` and not `instruct` gets the instruction (None:
        the pack's default)."""
        if self.instruct is None:
            return None
        return self.instruct and method in GATED_METHODS


@dataclass
class Sampling:
    options: GenOptions  # max tokens, temperature, top_p, seed, repetition penalty
    stop: list[str]
    stream: bool
    include_usage: bool


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"'{name}' must be a number", param=name)
    if not low <= value <= high:
        raise RequestError(f"'{name}' must be between {low:g} and {high:g}, got {value}",
                           param=name)
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"'{name}' must be an integer", param=name)
    if not low <= value <= high:
        raise RequestError(f"'{name}' must be between {low} and {high}, got {value}",
                           param=name)
    return value


def _flag(obj: dict[str, Any], name: str, param: str) -> bool:
    value = obj.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"'{param}' must be true or false", param=param)
    return value


# OpenAI fields this server does not implement: each is accepted only with the value that
# asks for nothing, and refused (naming the field) otherwise, never silently ignored.
UNSUPPORTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "n": ((1,), "1: this server returns one choice per request"),
    "best_of": ((1,), "1: this server returns one choice per request"),
    "logprobs": ((False,), "false (or absent): this server does not return log probabilities"),
    "top_logprobs": ((0,), "0 (or absent): this server does not return log probabilities"),
    "echo": ((False,), "false (or absent): this server does not echo the prompt"),
    "suffix": (("",), "absent: this server does not insert text"),
    "presence_penalty": ((0, 0.0), "0 (or absent): this server has no penalties"),
    "frequency_penalty": ((0, 0.0), "0 (or absent): this server has no penalties"),
    "logit_bias": (({},), "absent: this server does not bias logits"),
    "tools": (([],), "absent: this server does not call tools"),
    "functions": (([],), "absent: this server does not call tools"),
}


def check_unsupported(body: dict[str, Any]) -> None:
    for name, (neutral, what) in UNSUPPORTED.items():
        value = body.get(name)
        if value is None:
            continue
        if not any(type(value) is type(n) and value == n for n in neutral):
            raise RequestError(f"'{name}' must be {what}; got {_show(value)}", param=name)


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _max_tokens(body: dict[str, Any], limits: Limits) -> int:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None \
        else "max_tokens"
    value = body.get(name)
    if value is None:
        return limits.default_max_tokens
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"'{name}' must be a positive integer", param=name)
    if value > limits.max_tokens:
        raise RequestError(f"'{name}' is {value}; this server allows at most "
                           f"{limits.max_tokens}", param=name)
    return value


def sampling(body: dict[str, Any], limits: Limits) -> Sampling:
    """The decoding settings of a request; every field's type is checked."""
    check_unsupported(body)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("'model' must be a string", param="model")
    max_tokens = _max_tokens(body, limits)
    seed = _integer(body, "seed", -(1 << 63), (1 << 64) - 1)
    stop = body.get("stop")
    if stop is None:
        stop = []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise RequestError("'stop' must be a string or a list of up to 4 strings", param="stop")
    options = body.get("stream_options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", param="stream_options")
    base = limits.sampling
    opts = GenOptions(max_tokens=max_tokens,
                      temp=_number(body, "temperature", base.temp, 0.0, 2.0),
                      top_p=_number(body, "top_p", base.top_p, 1e-9, 1.0),
                      seed=None if seed is None else seed % (1 << 64),
                      repetition_penalty=_number(body, "repetition_penalty",
                                                 base.repetition_penalty, 1.0,
                                                 MAX_REPETITION_PENALTY))
    return Sampling(opts, stop, _flag(body, "stream", "stream"),
                    _flag(options, "include_usage", "stream_options.include_usage"))


def messages(body: dict[str, Any]) -> list[dict[str, str]]:
    raw = body.get("messages")
    if raw is None:
        raise RequestError("'messages' is required", param="messages")
    if not isinstance(raw, list) or not raw:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise RequestError(f"messages[{i}] needs a role of system, user or assistant",
                               param="messages")
        content = m.get("content", "")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            content = _text_parts(content, i)
        if not isinstance(content, str):
            raise RequestError(f"messages[{i}].content must be text", param="messages")
        out.append({"role": m["role"], "content": content})
    if not any(m["role"] == "user" for m in out):
        raise RequestError("'messages' needs at least one user message", param="messages")
    return out


def _text_parts(parts: list[Any], i: int) -> str:
    """The text of OpenAI's content parts; other part types (images, ...) are refused."""
    texts = []
    for j, p in enumerate(parts):
        if not isinstance(p, dict) or p.get("type") != "text":
            raise RequestError(f"messages[{i}].content[{j}] must be a text part "
                               '({"type": "text", "text": "..."})', param="messages")
        if not isinstance(p.get("text"), str):
            raise RequestError(f"messages[{i}].content[{j}].text must be a string",
                               param="messages")
        texts.append(p["text"])
    return "".join(texts)


def _targets(spec: Any, away: bool, param: str) -> list[Target]:
    if spec is None:
        return []
    if isinstance(spec, str):
        spec = {spec: None}
    if isinstance(spec, list):
        if not all(isinstance(name, str) for name in spec):
            raise RequestError(f"'{param}' as a list must hold value names (strings), got "
                               f"{_show(spec)}", param=param)
        spec = {name: None for name in spec}
    if not isinstance(spec, dict):
        raise RequestError(f"'{param}' must map value names to levels, e.g. "
                           '{"benevolence": 0.8}', param=param)
    out = []
    for name, p0 in spec.items():
        if p0 is not None and (isinstance(p0, bool) or not isinstance(p0, (int, float))):
            raise RequestError(f"the level for '{name}' must be a number in [0.5, 1)",
                               param=param)
        try:
            out.append(Target(str(name), None if p0 is None else float(p0), away))
        except ConvaError as exc:
            raise RequestError(str(exc), param=param) from None
    return out


def steering(body: dict[str, Any], defaults: Defaults) -> SteerConfig:
    """The request's `steering` extension (absent: the server's defaults)."""
    spec = body.get("steering")
    if spec is None:
        return defaults.config()
    if not isinstance(spec, dict):
        raise RequestError("'steering' must be an object", param="steering")
    unknown = sorted(set(spec) - {"values", "away", "method", "mode", "gate", "strength",
                                  "instruct"})
    if unknown:
        raise RequestError(f"unknown steering field(s): {', '.join(unknown)}", param="steering")
    for key in ("method", "mode"):
        if not isinstance(spec.get(key, ""), str):
            raise RequestError(f"'steering.{key}' must be a string", param=f"steering.{key}")
    method = spec.get("method", defaults.method)
    if method not in METHODS:
        raise RequestError(f"unknown method '{method}' (choose from {', '.join(METHODS)})",
                           param="steering.method")
    mode = spec.get("mode", "prompt")
    if mode not in MODES:
        raise RequestError(f"unknown mode '{mode}' (choose from {', '.join(MODES)})",
                           param="steering.mode")
    strength = spec.get("strength", defaults.strength)
    if strength is not None and (isinstance(strength, bool)
                                 or not isinstance(strength, (int, float))):
        raise RequestError("'steering.strength' must be a number (1 = the calibrated push)",
                           param="steering.strength")
    gate, instruct = spec.get("gate", True), spec.get("instruct", defaults.instructs(method))
    for key, flag in (("gate", gate), ("instruct", instruct)):
        if key in spec and not isinstance(flag, bool):
            raise RequestError(f"'steering.{key}' must be true or false",
                               param=f"steering.{key}")
    targets = (_targets(spec.get("values"), False, "steering.values")
               + _targets(spec.get("away"), True, "steering.away"))
    if method != "none" and not targets:
        if "values" in spec or "away" in spec:
            raise RequestError("choose at least one value to steer (or method none)",
                               param="steering.values")
        targets = list(defaults.targets)
    try:
        return SteerConfig(targets, method=method, mode=mode, gate=gate,
                           strength=None if strength is None else float(strength),
                           instruct=instruct)
    except ConvaError as exc:
        raise RequestError(str(exc), param="steering") from None


def prompt_text(body: dict[str, Any]) -> str:
    """The `prompt` of a text completion: a string, or a list holding one string."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError("'prompt' must be a string", param="prompt")
    return prompt


# ----------------------------------------------------------------------------- responses

Kind = Literal["chat", "completion"]


def diagnostics(result: GenerationResult) -> dict[str, Any]:
    """The steering diagnostics a response carries in its `conva` field."""
    d = result.as_dict()
    return {k: d[k] for k in ("method", "mode", "targets", "gate", "layers", "expected",
                              "instruction")}


def usage(result: GenerationResult) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": len(result.tokens),
            "total_tokens": result.prompt_tokens + len(result.tokens)}


def sse(body: dict[str, Any] | str) -> str:
    """One server-sent event (`data: ...` and a blank line)."""
    return f"data: {body if isinstance(body, str) else json.dumps(body)}\n\n"


SSE_DONE = sse("[DONE]")


def server_error(message: str) -> dict[str, Any]:
    return RequestError(message, 500, kind="server_error").body()


@dataclass(frozen=True)
class Reply:
    """The identity every part of one response shares, and the shapes it is written in."""
    kind: Kind
    model: str
    id: str
    created: int

    @classmethod
    def new(cls, kind: Kind, model: str) -> Reply:
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        return cls(kind, model, prefix + uuid.uuid4().hex[:24], int(time.time()))

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def whole(self, content: str, finish: str | None, result: GenerationResult
              ) -> dict[str, Any]:
        """A non-streaming response."""
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": content},
             "finish_reason": finish, "logprobs": None} if self.kind == "chat" else
            {"index": 0, "text": content, "finish_reason": finish, "logprobs": None})
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {**self._head(obj), "choices": [choice], "usage": usage(result),
                "conva": diagnostics(result)}

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.kind == "chat" else "text_completion"

    def chunk(self, text: str | None, finish: str | None = None, first: bool = False,
              result: GenerationResult | None = None) -> str:
        """One streamed piece; the last one (with `result`) carries the diagnostics."""
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish,
                                      "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish,
                      "logprobs": None}
        body = {**self._head(self._chunk_object), "choices": [choice]}
        if result is not None:
            body["conva"] = diagnostics(result)
        return sse(body)

    def usage_chunk(self, result: GenerationResult) -> str:
        """The extra last chunk `stream_options.include_usage` asks for."""
        return sse({**self._head(self._chunk_object), "choices": [], "usage": usage(result)})


def model_list(model_name: str) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                        "owned_by": "conva-mlx"}]}


def _value_info(pack: Pack, name: str, defaults: Defaults) -> dict[str, Any]:
    """One value in `GET /v1/steering`: its blocks, methods, and what the calibrated
    method is expected to do at the server's default strength (and instruction) when the
    pack is calibrated."""
    e = pack.value(name)
    info: dict[str, Any] = {
        "default_p0": e.default_p0, "layers": list(e.layers),
        "methods": ["caa"] if e.fixed_scale is not None else list(PACK_METHODS)}
    cfg = resolve_defaults(pack, SteerConfig([name], method="calibrated",
                                             strength=defaults.strength,
                                             instruct=defaults.instruct))
    effect = expected_effects(pack, cfg, [Target(name)])
    if effect:
        info["expected"] = effect[0].as_dict()
        info["expected_text"] = effect[0].sentence()
    return info


def steering_info(pack: Pack | None, defaults: Defaults) -> dict[str, Any]:
    """`GET /v1/steering`: the values a client can steer, the gate, the defaults."""
    resolved = resolve_defaults(pack, SteerConfig(
        method=defaults.method, strength=defaults.strength,  # type: ignore[arg-type]
        instruct=defaults.instruct))
    return {
        "values": {} if pack is None else {n: _value_info(pack, n, defaults)
                                           for n in pack.values},
        "gate": None if pack is None or pack.gate is None else {
            "layer": pack.gate.layer, "threshold": pack.gate.threshold},
        "calibration": None if pack is None or pack.calibration is None
        else pack.calibration_source,
        "defaults": {"values": {t.value: t.p0 for t in defaults.targets},
                     "method": defaults.method if defaults.targets else "none",
                     "strength": resolved.strength, "instruct": resolved.instruct},
        "methods": list(METHODS), "modes": list(MODES)}
