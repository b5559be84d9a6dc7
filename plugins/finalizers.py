"""Task types with finalizers, for demos and tests: each final outcome is noted in a
file, so that a test in another process can count the calls.

``finalizers.demo`` sleeps ``params["seconds"]`` (checking for cancel), then fails with
``params["fail"]`` (twice: it has two attempts) or succeeds. Its finalizer appends
``<state> <pid>`` to ``MEDIA_ROOT/batchtasks/finalized/<task id>``; with
``params["crash_finalizer"]`` its first call SIGKILLs its whole worker instead (a
worker lost between a task's end and its finalizers). ``finalizers.raising``'s
finalizer always raises. ``finalizers.webhook`` posts its outcome to
``$BATCHTASKS_DEMO_WEBHOOK`` when that is set; it fails its attempt number
``params["fail_attempt"]`` and returns its parameters otherwise.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings

from batchtasks import BatchTaskPlugin, batchtask, finalizer

if TYPE_CHECKING:
    from batchtasks.models import BatchTask

QUEUE = "batch.finalizers"


@batchtask(
    "finalizers.demo",
    queue=QUEUE,
    max_attempts=2,
    retry_backoff=0,
    description="Sleep, then succeed or fail; finalized.",
)
class Demo(BatchTaskPlugin):
    """Sleep ``seconds``, checking for cancel; then fail with ``fail``, else succeed."""

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + float(params.get("seconds", 0))
        while time.monotonic() < deadline:
            time.sleep(0.02)
            self.check_cancelled()
        if params.get("fail"):
            raise ConnectionError(f"attempt {self.attempt}: the far end did not answer")
        return {"attempt": self.attempt}


@batchtask("finalizers.raising", queue=QUEUE, description="Succeed; its finalizer raises.")
class Raising(BatchTaskPlugin):
    """Succeed at once."""

    def run(self, params: Any) -> str:
        return "done"


@batchtask(
    "finalizers.webhook",
    queue=QUEUE,
    webhook=os.environ.get("BATCHTASKS_DEMO_WEBHOOK") or None,
    description="Succeed; its outcome is posted to a webhook.",
)
class Webhook(BatchTaskPlugin):
    """Fail attempt ``fail_attempt``; return ``params`` as the result otherwise."""

    def run(self, params: Any) -> Any:
        if isinstance(params, dict) and params.get("fail_attempt") == self.attempt:
            raise ConnectionError(f"attempt {self.attempt}: the ledger was offline")
        return params


def finalized_folder() -> Path:
    """Where the demo finalizer notes its calls."""
    return Path(settings.MEDIA_ROOT) / "batchtasks" / "finalized"


@finalizer("finalizers.demo")
def note_outcome(task: BatchTask) -> None:
    """Append the task's final state and this process's pid to its file."""
    folder = finalized_folder()
    folder.mkdir(parents=True, exist_ok=True)
    crashed = folder / f"{int(task.pk)}.crashed"
    if (task.params or {}).get("crash_finalizer") and not crashed.exists():
        crashed.touch()
        os.killpg(os.getpgid(0), signal.SIGKILL)  # the worker and its pool, at once
    with (folder / str(int(task.pk))).open("a") as fh:
        fh.write(f"{task.state} {os.getpid()}\n")


@finalizer("finalizers.raising")
def archive(task: BatchTask) -> None:
    """Fail as an archive that is offline does."""
    raise ConnectionRefusedError(f"the archive refused task {task.pk}")
