"""Benchmark: `conva-mlx serve` under concurrent clients, side by side in one run.

Aggregate generated tokens/s at 1, 4, 8 and 16 concurrent clients for
  1. this server, unsteered (`steering: {"method": "none"}`);
  2. this server, mixed per-request steering (conva prompt mode, conva token mode, CAA,
     none, cycling over the clients);
  3. `mlx_lm.server` on the same model directory (the peer).
Printed as a table with the ratios the targets are stated in: steered / unsteered
(target >= 0.95), 8 clients / 1 client (target >= 3x), this server / mlx_lm.server
(target >= 1). Note: on a CPU this server runs the model in float32 (the dtype policy),
mlx_lm.server runs the checkpoint as stored (4-bit here), so (3) compares the two tools
as a user gets them.

Usage: .venv/bin/python tools/bench_server.py [--pack DIR] [--tokens 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.local_servers import free_port  # noqa: E402

PROMPTS = [
    "My neighbour asked me to help her move house this weekend. Should I?",
    "Should I lend my savings to my brother?",
    "I could take a promotion that means managing my friends. Should I?",
    "Write two sentences about the sea.",
]
MIXED: list[dict[str, Any]] = [
    {"values": {"benevolence": 0.95}, "gate": False},
    {"values": {"power": 0.95}, "mode": "token", "gate": False},
    {"values": {"power": 0.95}, "method": "caa"},
    {"method": "none"},
]


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.args!r}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"server did not start: {proc.args!r}")


def _post(base: str, body: dict[str, Any]) -> int:
    req = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return int(json.loads(resp.read())["usage"]["completion_tokens"])


def _throughput(base: str, clients: int, tokens: int, rounds: int,
                steering: list[dict[str, Any]] | None) -> float:
    """Generated tokens per second with `clients` requests in flight at once."""
    def one(i: int) -> int:
        body: dict[str, Any] = {  # no "model": each server answers with the one it loaded
            "max_tokens": tokens, "temperature": 0,
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}
        if steering is not None:
            body["steering"] = steering[i % len(steering)]
        return _post(base, body)

    total, start = 0, time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(rounds):
            total += sum(pool.map(one, range(clients)))
    return total / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pack", type=Path, default=None,
                    help="a pack for the default model (default: extract benevolence, power)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", default="1,4,8,16")
    args = ap.parse_args()
    from conva_mlx.models.blas import preload_env
    from conva_mlx.models.default_model import ensure_default_model

    model_dir = ensure_default_model()
    env = {**preload_env(), "HF_HUB_OFFLINE": "1"}
    pack = args.pack
    if pack is None:
        pack = Path(tempfile.mkdtemp()) / "pack"
        code = ("import conva_mlx as cm; lm = cm.load_model(); "
                f"cm.save_pack(cm.extract(lm, 'benevolence,power'), {str(pack)!r})")
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
    clients = [int(c) for c in args.clients.split(",")]
    ours_port, peer_port = free_port(), free_port()
    bin_dir = Path(sys.executable).parent
    ours = subprocess.Popen([str(bin_dir / "conva-mlx"), "serve", "--pack", str(pack),
                             "--port", str(ours_port), "--max-batch", str(max(clients))],
                            env=env, stderr=subprocess.DEVNULL)
    peer = subprocess.Popen([sys.executable, "-m", "mlx_lm.server", "--model", str(model_dir),
                             "--port", str(peer_port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        _wait(f"http://127.0.0.1:{ours_port}/health", ours)
        _wait(f"http://127.0.0.1:{peer_port}/v1/models", peer)
        a, b = f"http://127.0.0.1:{ours_port}", f"http://127.0.0.1:{peer_port}"
        _throughput(a, 2, 8, 1, None)  # warm up both
        _throughput(b, 2, 8, 1, None)
        for c in clients:
            plain = _throughput(a, c, args.tokens, args.rounds, [{"method": "none"}])
            mixed = _throughput(a, c, args.tokens, args.rounds, MIXED)
            mlx = _throughput(b, c, args.tokens, args.rounds, None)
            rows.append((c, plain, mixed, mlx))
            print(f"  {c} clients: unsteered {plain:.1f}, mixed {mixed:.1f}, "
                  f"mlx_lm.server {mlx:.1f} tok/s", flush=True)
    finally:
        for p in (ours, peer):
            p.terminate()
            p.wait(timeout=30)
    one = rows[0][1]
    print("\n| clients | unsteered tok/s | mixed steering tok/s | steered / unsteered | "
          "unsteered / 1 client | mlx_lm.server tok/s | ours / mlx_lm.server |")
    print("|---|---|---|---|---|---|---|")
    for c, plain, mixed, mlx in rows:
        print(f"| {c} | {plain:.1f} | {mixed:.1f} | {mixed / plain:.2f} | {plain / one:.2f}x "
              f"| {mlx:.1f} | {plain / mlx:.2f} |")


if __name__ == "__main__":
    main()
