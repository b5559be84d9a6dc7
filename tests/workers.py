"""Real ``celery worker`` subprocesses on the test database and the run's Redis prefix."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def database_url(alias: str = DEFAULT_DB_ALIAS) -> str:
    """A URL of a database the tests use (the test database, once created)."""
    s = connections[alias].settings_dict
    user = s.get("USER") or ""
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def task_database_env() -> dict[str, str]:
    """The task database of its own, on its leg (.ci/taskdb): the run's test one."""
    if "tasks" not in connections.settings:
        return {}
    return {"TASKS_DATABASE_URL": database_url("tasks")}


#: What the tests' workers go without: the broker's broadcast (pub/sub) traffic between
#: workers, which the engine does not need.
QUIET = ["--without-gossip", "--without-mingle", "--without-heartbeat"]


class Worker:
    """One ``celery -A project worker`` process group."""

    def __init__(
        self,
        name: str,
        queues: list[str],
        *,
        concurrency: int = 2,
        log_dir: Path,
        env: dict[str, str] | None = None,
        settings_module: str = "tests.settings",
        extra_args: list[str] | None = None,
        log_name: str | None = None,
        chatty: bool = False,
    ) -> None:
        self.settings_module = settings_module
        self.extra_args = extra_args or []
        #: With gossip, mingle and heartbeats, as deployed (docker/compose.yaml); the
        #: tests' workers go without them unless they need what they bring.
        self.chatty = chatty
        self.name = name
        self.queues = queues
        self.concurrency = concurrency
        self.log_path = log_dir / f"worker-{log_name or name}.log"
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def hostname(self) -> str:
        return f"{self.name}@{os.uname().nodename}"

    @property
    def pid(self) -> int:
        """The pid of the worker's main process (its last start)."""
        assert self.process is not None
        return self.process.pid

    def log_count(self, text: str) -> int:
        """How often ``text`` appears in the worker's log."""
        return self.log().count(text)

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "project", "worker",
            "-Q", ",".join(self.queues), "-c", str(self.concurrency), "-n", f"{self.name}@%h",
            "-P", "prefork", "--prefetch-multiplier", "1",
            *([] if self.chatty else QUIET), "-l", "info",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, wait: bool = True) -> Worker:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": self.settings_module,
            "DATABASE_URL": database_url(),
            **task_database_env(),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        self._ready_before = self.log_count(f"{self.hostname} ready.")
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        if wait:
            self.wait_ready()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"worker {self.name} exited early:\n{self.log()[-4000:]}")
            return self.log_count(f"{self.hostname} ready.") > self._ready_before

        wait_for(ready, timeout=timeout, interval=0.1)

    def _signal_group(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as an OOM killer would."""
        self._signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown; kill if it takes longer than ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)
        self._signal_group(signal.SIGKILL)
        self.process.wait(10)
