"""Start a real HTTP server subprocess on 127.0.0.1 for a test, and stop it afterwards."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


@contextmanager
def running_server(cmd: Sequence[str], ready_url: str, name: str,
                   timeout: float = 120.0) -> Iterator[None]:
    """Run `cmd` until the block ends; wait until `ready_url` answers 200 first."""
    proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + timeout
        while not _ready(ready_url):
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"{name} exited with {proc.returncode}: {err[-2000:]}")
            if time.time() > deadline:
                pytest.fail(f"{name} did not start in {timeout:.0f} s")
            time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
