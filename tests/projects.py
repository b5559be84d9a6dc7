"""Running a whole Django project of the docs or the examples in a test: its commands, a
real worker started from a command line, and the database and broker keys it leaves."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import redis


def run(line: str, folder: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["bash", "-c", line],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"{line!r} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def start_worker(
    line: str, folder: Path, env: dict[str, str], log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``line`` in the background and wait for Celery's "ready." in its log."""
    log = log or folder / "worker.log"
    with log.open("ab") as out:
        worker = subprocess.Popen(
            ["bash", "-c", f"exec {line}"], cwd=folder, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 90
    while "ready." not in log.read_text(errors="replace"):
        if worker.poll() is not None or time.monotonic() > deadline:
            stop(worker)
            raise AssertionError(f"the worker did not get ready:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    return worker


def stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(10)


def drop_database(name: str) -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c",
         f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'],
        capture_output=True, check=False,
    )  # fmt: skip


def clear_prefix(broker: str, prefix: str) -> None:
    client = redis.Redis.from_url(broker)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
