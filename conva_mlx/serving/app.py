"""The HTTP surface (Starlette): OpenAI's endpoints plus `/v1/steering`, over the batcher."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from conva_mlx.errors import ConvaError
from conva_mlx.packs.pack import Pack
from conva_mlx.serving import protocol
from conva_mlx.serving.batcher import ContinuousBatcher, Event, Job
from conva_mlx.steering.config import METHODS, MODES, SteerConfig, Target
from conva_mlx.steering.effects import expected_effects
from conva_mlx.steering.engine import PACK_METHODS
from conva_mlx.steering.reports import GenerationResult
from conva_mlx.steering.session import Prepared, SteeringSession


@dataclass
class ServerConfig:
    model_name: str
    defaults: protocol.Defaults
    limits: protocol.Limits
    api_key: str | None = None  # read from the environment at start-up; never logged


def _error(exc: protocol.RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def diagnostics(result: GenerationResult) -> dict[str, Any]:
    """The steering diagnostics a response carries in its `conva` field."""
    d = result.as_dict()
    return {k: d[k] for k in ("method", "mode", "targets", "gate", "layers", "expected")}


def _value_info(pack: Pack, name: str) -> dict[str, Any]:
    """One value in `GET /v1/steering`: its blocks, methods, and what the calibrated
    method's default strength is expected to do (when the pack is calibrated)."""
    e = pack.value(name)
    info: dict[str, Any] = {
        "default_p0": e.default_p0, "layers": list(e.layers),
        "methods": ["caa"] if e.fixed_scale is not None else list(PACK_METHODS)}
    effect = expected_effects(pack, SteerConfig([name], method="calibrated"), [Target(name)])
    if effect:
        info["expected"] = effect[0].as_dict()
        info["expected_text"] = effect[0].sentence()
    return info


def _usage(result: GenerationResult) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": len(result.tokens),
            "total_tokens": result.prompt_tokens + len(result.tokens)}


DISCONNECT_POLL_S = 0.25


async def _watch_disconnect(request: Request, job: Job, events: asyncio.Queue[Event]) -> None:
    """A non-streaming client that gives up frees its batch row at once: mark the job
    cancelled (the batcher drops the row at its next step) and end the wait for it."""
    while not job.cancelled.is_set():
        if await request.is_disconnected():
            job.cancelled.set()
            events.put_nowait(Event(error="the client disconnected"))
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


def create_app(session: SteeringSession, config: ServerConfig, max_batch: int = 16) -> Starlette:
    batcher = ContinuousBatcher(session, max_batch)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    def check_key(request: Request) -> None:
        if config.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not token or not hmac.compare_digest(token.encode(), config.api_key.encode()):
            raise protocol.RequestError("missing or wrong API key (send 'Authorization: "
                                        "Bearer <key>')", status=401,
                                        kind="authentication_error")

    async def read_body(request: Request) -> dict[str, Any]:
        check_key(request)
        raw = await request.body()
        if len(raw) > config.limits.max_body_bytes:
            raise protocol.RequestError(f"the request body is {len(raw)} bytes; the limit is "
                                        f"{config.limits.max_body_bytes}")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise protocol.RequestError(f"the body is not valid JSON ({exc})") from None
        except RecursionError:
            raise protocol.RequestError("the body is nested too deeply") from None
        if not isinstance(body, dict):
            raise protocol.RequestError("the body must be a JSON object")
        return body

    def prepare(build: Callable[[], Prepared], text_param: str) -> Prepared:
        """The session's own checks; their errors name the prompt's field or steering."""
        try:
            return build()
        except ConvaError as exc:
            message = str(exc)
            param = text_param if message.startswith("the prompt") else "steering"
            raise protocol.RequestError(message, param=param) from None

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "active_requests": batcher.active})

    async def models(request: Request) -> Response:
        try:
            check_key(request)
        except protocol.RequestError as exc:
            return _error(exc)
        return JSONResponse({"object": "list", "data": [
            {"id": config.model_name, "object": "model", "created": 0,
             "owned_by": "conva-mlx"}]})

    async def steering_info(request: Request) -> Response:
        try:
            check_key(request)
        except protocol.RequestError as exc:
            return _error(exc)
        pack = session.pack
        values = {} if pack is None else {
            name: _value_info(pack, name) for name in pack.values}
        gate = None if pack is None or pack.gate is None else {
            "layer": pack.gate.layer, "threshold": pack.gate.threshold}
        return JSONResponse({
            "values": values, "gate": gate,
            "calibration": None if pack is None or pack.calibration is None
            else pack.calibration_source,
            "defaults": {"values": {t.value: t.p0 for t in config.defaults.targets},
                         "method": config.defaults.method if config.defaults.targets
                         else "none"},
            "methods": list(METHODS), "modes": list(MODES)})

    async def run(request: Request, prepared: Prepared, cfg: SteerConfig,
                  samp: protocol.Sampling, kind: str) -> Response:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def emit(ev: Event) -> None:  # called on the batcher's thread
            loop.call_soon_threadsafe(events.put_nowait, ev)

        job = Job(prepared, cfg, samp.options, emit, samp.stop)
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        batcher.submit(job)
        if samp.stream:
            return StreamingResponse(_sse(rid, created, kind, samp, job, events),
                                     media_type="text/event-stream")
        text: list[str] = []
        watcher = asyncio.create_task(_watch_disconnect(request, job, events))
        try:
            while True:
                ev = await events.get()
                if ev.error is not None:
                    return JSONResponse(protocol.RequestError(ev.error, 500,
                                                              kind="server_error").body(), 500)
                text.append(ev.text)
                if ev.result is not None:
                    break
        finally:
            job.cancelled.set()
            watcher.cancel()
        result = ev.result
        content = "".join(text)
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": content},
             "finish_reason": ev.finish_reason, "logprobs": None} if kind == "chat" else
            {"index": 0, "text": content, "finish_reason": ev.finish_reason, "logprobs": None})
        return JSONResponse({
            "id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": created, "model": config.model_name, "choices": [choice],
            "usage": _usage(result), "conva": diagnostics(result)})

    async def _sse(rid: str, created: int, kind: str, samp: protocol.Sampling, job: Job,
                   events: asyncio.Queue[Event]) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(text: str | None, finish: str | None, extra: dict[str, Any] | None = None,
                  first: bool = False) -> str:
            if kind == "chat":
                delta: dict[str, Any] = {"role": "assistant"} if first else {}
                if text:
                    delta["content"] = text
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish,
                                          "logprobs": None}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish,
                          "logprobs": None}
            body = {"id": rid, "object": obj, "created": created,
                    "model": config.model_name, "choices": [choice], **(extra or {})}
            return f"data: {json.dumps(body)}\n\n"

        try:
            if kind == "chat":
                yield chunk(None, None, first=True)
            while True:
                ev = await events.get()
                if ev.error is not None:
                    err = protocol.RequestError(ev.error, 500, kind="server_error").body()
                    yield f"data: {json.dumps(err)}\n\n"
                    break
                if ev.result is None:
                    if ev.text:
                        yield chunk(ev.text, None)
                    continue
                yield chunk(ev.text, ev.finish_reason, {"conva": diagnostics(ev.result)})
                if samp.include_usage:
                    yield (f"data: {json.dumps({'id': rid, 'object': obj, 'created': created, 'model': config.model_name, 'choices': [], 'usage': _usage(ev.result)})}\n\n")  # noqa: E501
                break
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()  # a client gone mid-stream frees its batch row

    async def chat_completions(request: Request) -> Response:
        try:
            body = await read_body(request)
            msgs = protocol.messages(body)
            samp = protocol.sampling(body, config.limits)
            cfg = protocol.steering(body, config.defaults)
            prepared = prepare(lambda: session.prepare(msgs, cfg), "messages")
        except protocol.RequestError as exc:
            return _error(exc)
        return await run(request, prepared, cfg, samp, "chat")

    async def completions(request: Request) -> Response:
        try:
            body = await read_body(request)
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise protocol.RequestError("'prompt' must be a string", param="prompt")
            samp = protocol.sampling(body, config.limits)
            cfg = protocol.steering(body, config.defaults)
            text = prompt
            prepared = prepare(lambda: session.prepare(text, cfg, raw=True), "prompt")
        except protocol.RequestError as exc:
            return _error(exc)
        return await run(request, prepared, cfg, samp, "completion")

    return Starlette(routes=[
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/steering", steering_info),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ], lifespan=lifespan)
