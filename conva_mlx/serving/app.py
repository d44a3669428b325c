"""The HTTP surface (Starlette): OpenAI's endpoints plus `/v1/steering`, over the batcher.

Handlers are plain module-level functions; what they share (the session, the settings, the
batcher) lives on `app.state.server`. `protocol` reads the requests and writes the bodies."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from conva_mlx.errors import ConvaError
from conva_mlx.serving import protocol
from conva_mlx.serving.batcher import ContinuousBatcher, Event, Job
from conva_mlx.steering.config import SteerConfig
from conva_mlx.steering.session import Messages, Prepared, SteeringSession


@dataclass
class ServerConfig:
    model_name: str
    defaults: protocol.Defaults
    limits: protocol.Limits
    api_key: str | None = None  # read from the environment at start-up; never logged


@dataclass
class Server:
    """What every handler shares."""
    session: SteeringSession
    config: ServerConfig
    batcher: ContinuousBatcher = field(init=False)
    max_batch: int = 16

    def __post_init__(self) -> None:
        self.batcher = ContinuousBatcher(self.session, self.max_batch)


def _server(request: Request) -> Server:
    server: Server = request.app.state.server
    return server


def _error(exc: protocol.RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _check_key(request: Request) -> None:
    key = _server(request).config.api_key
    if key is None:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    if not token or not hmac.compare_digest(token.encode(), key.encode()):
        raise protocol.RequestError("missing or wrong API key (send 'Authorization: "
                                    "Bearer <key>')", status=401, kind="authentication_error")


async def _read_body(request: Request) -> dict[str, Any]:
    _check_key(request)
    limit = _server(request).config.limits.max_body_bytes
    raw = await request.body()
    if len(raw) > limit:
        raise protocol.RequestError(f"the request body is {len(raw)} bytes; the limit is "
                                    f"{limit}")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise protocol.RequestError(f"the body is not valid JSON ({exc})") from None
    except RecursionError:
        raise protocol.RequestError("the body is nested too deeply") from None
    if not isinstance(body, dict):
        raise protocol.RequestError("the body must be a JSON object")
    return body


def _prepare(build: Callable[[], Prepared], text_param: str) -> Prepared:
    """The session's own checks; their errors name the prompt's field or steering."""
    try:
        return build()
    except ConvaError as exc:
        message = str(exc)
        param = text_param if message.startswith("the prompt") else "steering"
        raise protocol.RequestError(message, param=param) from None


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


async def _stream(reply: protocol.Reply, samp: protocol.Sampling, job: Job,
                  events: asyncio.Queue[Event]) -> AsyncIterator[str]:
    try:
        if reply.kind == "chat":
            yield reply.chunk(None, first=True)
        while True:
            ev = await events.get()
            if ev.error is not None:
                yield protocol.sse(protocol.server_error(ev.error))
                break
            if ev.result is None:
                if ev.text:
                    yield reply.chunk(ev.text)
                continue
            yield reply.chunk(ev.text, ev.finish_reason, result=ev.result)
            if samp.include_usage:
                yield reply.usage_chunk(ev.result)
            break
        yield protocol.SSE_DONE
    finally:
        job.cancelled.set()  # a client gone mid-stream frees its batch row


async def _run(request: Request, prepared: Prepared, cfg: SteerConfig,
               samp: protocol.Sampling, kind: protocol.Kind) -> Response:
    server = _server(request)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()

    def emit(ev: Event) -> None:  # called on the batcher's thread
        loop.call_soon_threadsafe(events.put_nowait, ev)

    job = Job(prepared, cfg, samp.options, emit, samp.stop)
    reply = protocol.Reply.new(kind, server.config.model_name)
    server.batcher.submit(job)
    if samp.stream:
        return StreamingResponse(_stream(reply, samp, job, events),
                                 media_type="text/event-stream")
    text: list[str] = []
    watcher = asyncio.create_task(_watch_disconnect(request, job, events))
    try:
        while True:
            ev = await events.get()
            if ev.error is not None:
                return JSONResponse(protocol.server_error(ev.error), 500)
            text.append(ev.text)
            if ev.result is not None:
                break
    finally:
        job.cancelled.set()
        watcher.cancel()
    return JSONResponse(reply.whole("".join(text), ev.finish_reason, ev.result))


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "active_requests": _server(request).batcher.active})


async def models(request: Request) -> Response:
    try:
        _check_key(request)
    except protocol.RequestError as exc:
        return _error(exc)
    return JSONResponse(protocol.model_list(_server(request).config.model_name))


async def steering_info(request: Request) -> Response:
    try:
        _check_key(request)
    except protocol.RequestError as exc:
        return _error(exc)
    server = _server(request)
    return JSONResponse(protocol.steering_info(server.session.pack, server.config.defaults))


async def _complete(request: Request, kind: protocol.Kind) -> Response:
    """Both completion endpoints: the chat's messages or the raw prompt, then the same path."""
    server = _server(request)
    try:
        body = await _read_body(request)
        text: Messages
        if kind == "chat":
            text, param = protocol.messages(body), "messages"
        else:
            text, param = protocol.prompt_text(body), "prompt"
        samp = protocol.sampling(body, server.config.limits)
        cfg = protocol.steering(body, server.config.defaults)
        prepared = _prepare(
            lambda: server.session.prepare(text, cfg, raw=kind == "completion"), param)
    except protocol.RequestError as exc:
        return _error(exc)
    return await _run(request, prepared, cfg, samp, kind)


async def chat_completions(request: Request) -> Response:
    return await _complete(request, "chat")


async def completions(request: Request) -> Response:
    return await _complete(request, "completion")


ROUTES = [
    Route("/health", health),
    Route("/v1/models", models),
    Route("/v1/steering", steering_info),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
]


def create_app(session: SteeringSession, config: ServerConfig, max_batch: int = 16) -> Starlette:
    server = Server(session, config, max_batch)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        server.batcher.start()
        try:
            yield
        finally:
            server.batcher.stop()

    app = Starlette(routes=ROUTES, lifespan=lifespan)
    app.state.server = server
    return app
