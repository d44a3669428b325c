"""`conva-mlx serve`: the OpenAI-compatible server with per-request steering."""

from __future__ import annotations

import errno
import os
import socket

import click

from conva_mlx.cli.options import log, model_option
from conva_mlx.errors import ConvaError
from conva_mlx.models.loading import load_model
from conva_mlx.packs.pack import merge_packs
from conva_mlx.serving.app import ServerConfig, create_app
from conva_mlx.serving.protocol import Defaults, Limits
from conva_mlx.sharing.pack_source import open_pack
from conva_mlx.steering.config import SteerConfig, Target
from conva_mlx.steering.session import SteeringSession


@click.command()
@model_option
@click.option("--pack", "pack_specs", multiple=True,
              help="Pack directory or hf://REPO_ID (repeatable; chosen at start-up only).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (other machines can connect only if you change it).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--values", "value_specs", multiple=True,
              help="Default steering for requests that send none: VALUE[:P0] (repeatable).")
@click.option("--strength", type=float, default=None,
              help="The calibrated push's strength for requests that give none (1 = the "
                   "calibrated push; default: the pack's, 0.5 on Qwen2.5-0.5B, else 1).")
@click.option("--instruct/--no-instruct", default=None,
              help="Whether requests with a gated method (calibrated, conva) that do not say "
                   "'instruct' also get ICA's instruction where the gate opens (default: "
                   "the pack's, on where its calibration was measured with it).")
@click.option("--api-key-env", default=None,
              help="Require 'Authorization: Bearer <key>' with the key in this variable.")
@click.option("--max-batch", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Requests decoded together.")
@click.option("--max-tokens-cap", type=click.IntRange(1), default=2048, show_default=True,
              help="The largest max_tokens a request may ask for.")
def serve(model_spec: str, dtype: str, pack_specs: tuple[str, ...], host: str, port: int,
          value_specs: tuple[str, ...], strength: float | None, instruct: bool | None,
          api_key_env: str | None, max_batch: int, max_tokens_cap: int) -> None:
    """Serve an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models,
    /v1/steering, /health); requests choose their steering in a `steering` field."""
    import uvicorn

    defaults = Defaults([Target.parse(v) for v in value_specs], strength=strength,
                        instruct=instruct)
    try:
        SteerConfig(method=defaults.method, strength=strength)  # type: ignore[arg-type]
    except ConvaError as exc:
        raise ConvaError(f"--strength: {exc}") from None
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env, "").strip()
        if not api_key:
            raise ConvaError(f"--api-key-env {api_key_env}: the variable is not set")
    packs = [open_pack(s) for s in pack_specs]
    pack = merge_packs(packs) if packs else None
    for t in defaults.targets:
        if pack is None:
            raise ConvaError("--values needs a --pack that offers them")
        pack.value(t.value)
    sock = listen_socket(host, port)  # a taken port fails now, not after loading the model
    lm = load_model(model_spec, dtype)
    session = SteeringSession(lm, pack)
    config = ServerConfig(lm.model_id, defaults, Limits(max_tokens=max_tokens_cap), api_key)
    app = create_app(session, config, max_batch)
    log(f"serving {lm.model_id} on http://{host}:{port}/v1 "
        f"({len(pack.values) if pack else 0} steerable values; Ctrl-C stops)")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])


def listen_socket(host: str, port: int) -> socket.socket:
    """Bind `host:port` (the server listens on this socket), or one clear error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConvaError(f"--host {host}: not an address this machine can listen on "
                         f"({exc})") from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = ("choose another --port" if exc.errno == errno.EADDRINUSE else
                "check --host and --port")
        raise ConvaError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                         f"{hint}") from exc
    return sock
