"""Small task types for demos, tests and benchmarks."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction

from batchtasks import BatchTaskPlugin, batchtask, param
from batchtasks.core.exceptions import PermanentFailure
from batchtasks.core.plugin import ExecutorPlugin
from plugins.executors.demo import escape


def _record(
    params: dict[str, Any], task_id: int | None, event: str, when: float, *, suffix: str = ""
) -> None:
    """With ``params["record"]``, append ``<event> <pid> <time>`` to
    ``MEDIA_ROOT/batchtasks/runs/<task id>``: a real side effect that tests read to prove
    a task started once, or that two never ran at once. Never a path from params."""
    if not params.get("record") or task_id is None:
        return
    folder = Path(settings.MEDIA_ROOT) / "batchtasks" / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{int(task_id)}{suffix}").open("a") as fh:
        fh.write(f"{event} {os.getpid()} {when:.6f}\n".lstrip())


@batchtask("examples.noop", description="Do nothing (benchmarks).")
class Noop(BatchTaskPlugin):
    """Do nothing and return nothing."""

    def run(self, params: Any) -> None:
        return None


# Not on the HTTP API: its parameters play a plugin that misbehaves, for the workers'
# tests (any length, never checking for cancel, ignoring SIGTERM), and it has no timeout
# of its own (the tests of time limits give it theirs). examples.progress is the demo
# that a request may start.
@batchtask("examples.sleep", description="Sleep for params['seconds'], checking for cancel.")
class Sleep(BatchTaskPlugin):
    """Sleep in small steps, checking for cancellation between them.

    ``cooperate: false`` never checks (a plugin stuck in a long call);
    ``ignore_sigterm: true`` also ignores SIGTERM (a plugin that will not be told);
    ``catch_soft: true`` returns early, saying so, when the soft time limit strikes;
    ``swallow: true`` returns whatever is raised in it (a plugin that will not fail);
    ``pulse: true`` (with ``record``) notes ``<pid> <time>`` at each step of the sleep in
    ``runs/<task id>.pulse``: when a run really stopped, whoever stopped it;
    ``die: true`` SIGKILLs its own process once started (the kernel's OOM killer, say).
    """

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        seconds = float(params.get("seconds", 1.0))
        if params.get("ignore_sigterm"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        start = time.time()
        _record(params, self.task_id, "start", start)
        if params.get("die"):
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            self._sleep(seconds, cooperate=params.get("cooperate", True), params=params)
        except SoftTimeLimitExceeded:
            if not params.get("catch_soft"):
                raise
            return {"soft_timeout": True, "start": start, "end": time.time()}
        except Exception as exc:
            if not params.get("swallow"):
                raise
            return {"swallowed": type(exc).__name__, "start": start, "end": time.time()}
        end = time.time()
        _record(params, self.task_id, "end", end)
        return {"slept": seconds, "start": start, "end": end, "pid": os.getpid()}

    def _sleep(self, seconds: float, *, cooperate: bool, params: dict[str, Any]) -> None:
        deadline = time.monotonic() + seconds
        pulse = params.get("pulse") and params.get("record")
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(0.05, left))
            if pulse:
                _record(params, self.task_id, "", time.time(), suffix=".pulse")
            if cooperate:
                self.check_cancelled()


@batchtask("examples.flaky", max_attempts=3, retry_backoff=1, description="Fail, then succeed.")
class Flaky(BatchTaskPlugin):
    """Fail each attempt before ``succeed_on`` (default 2); ``permanent`` fails for good."""

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("permanent"):
            raise PermanentFailure("this will not get better by trying again")
        if self.attempt < int(params.get("succeed_on", 2)):
            raise ConnectionError(f"attempt {self.attempt}: the far end did not answer")
        return {"attempt": self.attempt}


@batchtask("examples.merge", description="Return the results of the tasks it depends on.")
class Merge(BatchTaskPlugin):
    """Gather its parents' results (``depends_on``, ``group.then``)."""

    def run(self, params: Any) -> dict[str, Any]:
        results = self.parent_results()
        return {"parents": [[pk, result] for pk, result in results.items()]}


@batchtask(
    "examples.fail",
    web=True,
    timeout=60,  # it fails at once; any signed-in user may start it
    description="Raise an error with params['message'].",
)
class Fail(BatchTaskPlugin):
    """Fail on purpose."""

    @dataclass
    class Params:
        message: str = param("failed on purpose", max_length=500)

    def run(self, params: dict[str, Any]) -> None:
        raise ValueError(params.get("message", "failed on purpose"))


@batchtask(
    "examples.progress",
    web=True,
    # Any signed-in user may start it: past the longest run its bounds allow (1000 steps
    # of 1 s, then 60 s of silence), it is stopped.
    timeout=1200,
    description="Report progress in params['steps'] steps.",
)
class Progress(BatchTaskPlugin):
    """Walk through steps, reporting progress after each (``message`` goes before the
    "step n of m"); then, with ``silent_after``, work that many seconds more without a
    word. ``atomic`` (code only) holds a transaction open the whole time."""

    @dataclass
    class Params:
        steps: int = param(10, minimum=1, maximum=1000)
        delay: float = param(0.2, minimum=0, maximum=1)
        message: str = param("", max_length=200)
        silent_after: float = param(0, minimum=0, maximum=60)
        atomic: bool = param(False, web=False)

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        steps = int(params.get("steps", 10))
        delay = float(params.get("delay", 0.2))
        # With "atomic", the work holds a transaction open the whole time, as an
        # import that must land all or nothing does; progress must show regardless.
        with transaction.atomic() if params.get("atomic") else nullcontext():
            if params.get("atomic"):
                get_user_model().objects.exists()  # really open the transaction
            for step in range(1, steps + 1):
                time.sleep(delay)
                self.check_cancelled()
                label = f"step {step} of {steps}"
                if params.get("message"):
                    label = f"{params['message']} {label}"
                self.progress(100 * step / steps, label)
        time.sleep(float(params.get("silent_after", 0)))
        return {"steps": steps}


def _note_pid(task_id: int | None, pid: int) -> None:
    """Append a process id this task started to ``MEDIA_ROOT/batchtasks/pids/<task id>``
    (tests check that no such process outlives its task)."""
    if task_id is None:
        return
    folder = Path(settings.MEDIA_ROOT) / "batchtasks" / "pids"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / str(int(task_id))).open("a") as fh:
        fh.write(f"{pid}\n")


@batchtask("examples.process_progress", isolation="process", description="Progress, isolated.")
class IsolatedProgress(Progress):
    """``examples.progress`` in a child process of its own; ``fail`` raises that message;
    ``database`` (code only) reads the task and writes in a transaction, and says which
    PostgreSQL backend served it. The result says where it ran: its pid, its parent's,
    its working directory, and the sockets it holds."""

    @dataclass
    class Params(Progress.Params):
        fail: str | None = None
        database: bool = param(False, web=False)

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("fail"):
            raise ValueError(params["fail"])
        outcome = {
            **super().run(params),
            "pid": os.getpid(),
            "parent": os.getppid(),
            "cwd": os.getcwd(),
            "sockets": _sockets(),
        }
        if params.get("database"):
            assert self.task.pk == self.task_id
            with transaction.atomic():
                get_user_model().objects.filter(pk=-1).update(first_name="")
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_backend_pid()")
                    outcome["backend"] = cursor.fetchone()[0]
        return outcome


def _sockets() -> int:
    """How many sockets this process holds open."""
    fds = Path("/proc/self/fd")
    if not fds.exists():
        return 0
    return sum(os.readlink(fd).startswith("socket:") for fd in fds.iterdir() if fd.is_symlink())


@batchtask("examples.process_noop", isolation="process", description="Nothing, isolated.")
class IsolatedNoop(BatchTaskPlugin):
    """Do nothing in a child process (benchmarks: the cost of isolation); ``stamp: true``
    returns when it started (``time.time()``)."""

    def run(self, params: Any) -> float | None:
        if isinstance(params, dict) and params.get("stamp"):
            return time.time()
        return None


@batchtask(
    "examples.process_memory_hog",
    isolation="process",
    memory_limit=512 * 1024 * 1024,
    description="Allocate params['mb'] megabytes (limit 512 MB).",
)
class MemoryHog(BatchTaskPlugin):
    """Allocate (and touch) ``mb`` megabytes: past the type's memory limit it fails.
    ``lift_limit: true`` first tries to lift the limit, as a plugin might, and reports
    whether it could (``lifted``) with the limits it saw (soft and hard ``RLIMIT_AS``)."""

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        outcome: dict[str, Any] = {}
        if params.get("lift_limit"):
            outcome["limits"] = resource.getrlimit(resource.RLIMIT_AS)
            try:
                infinity = resource.RLIM_INFINITY
                resource.setrlimit(resource.RLIMIT_AS, (infinity, infinity))
                outcome["lifted"] = True
            except (ValueError, OSError) as exc:
                outcome.update(lifted=False, error=str(exc))
        mb = int(params.get("mb", 1024))
        blob = bytearray(mb * 1024 * 1024)
        return {**outcome, "allocated_mb": len(blob) // (1024 * 1024), "pid": os.getpid()}


@batchtask(
    "examples.process_spawner", isolation="process", description="Start `sleep 300` and wait."
)
class Spawner(BatchTaskPlugin):
    """Start a grandchild (``sleep 300``), note its pid, and wait for it; ``cooperate:
    false`` never checks for cancel. ``escape: true`` starts it as a daemon (out of the
    process group, its parent gone) and returns at once."""

    def run(self, params: dict[str, Any]) -> None:
        if params.get("escape"):
            _note_pid(self.task_id, escape(300))
            return
        sleeper = subprocess.Popen(["sleep", "300"])
        _note_pid(self.task_id, sleeper.pid)
        while sleeper.poll() is None:
            time.sleep(0.05)
            if params.get("cooperate", True):
                self.check_cancelled()


@batchtask(
    "examples.silent",
    inactivity_timeout=2,
    description="Say one word, then work silently for params['seconds'] (limit 2 s).",
)
class Silent(BatchTaskPlugin):
    """Report progress once, then sleep without a word (the inactivity watchdog's prey)."""

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        self.progress(1, "starting")
        time.sleep(float(params.get("seconds", 60)))
        return {"slept": params.get("seconds", 60)}


@batchtask("examples.program", isolation="executor", description="The demo executor program.")
class DemoExecutor(ExecutorPlugin):
    """``plugins/executors/demo.py``: progress, result, errors, grandchildren and
    silence on demand (see that program)."""

    command = [sys.executable, str(Path(__file__).parent / "executors" / "demo.py")]
    environment = {"BATCHTASKS_DEMO_MEDIA": "MEDIA_ROOT"}
