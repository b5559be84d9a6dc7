"""A web server of the reference project for the benchmarks (bench/poll.py: gunicorn,
bench/push.py: uvicorn): started on a free port of 127.0.0.1, ready once it answers
``GET /``, stopped at the end."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.run import wait_until

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(argv: list[str], port: int, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """``python -m <argv>`` from the repository root, once it answers on ``port``; its
    output is shown if it exits early. Terminated at the end (killed after 30 s)."""
    import urllib3

    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", *argv], env=env, cwd=ROOT, stdout=log, stderr=log, text=True
        )

        def answers() -> bool:
            if server.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{argv[0]} exited:\n{log.read()[-3000:]}")
            try:
                return bool(urllib3.request("GET", f"http://127.0.0.1:{port}/", retries=False))
            except urllib3.exceptions.HTTPError:
                return False

        try:
            wait_until(answers, 60, interval=0.1)
            yield server
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
