"""A packed task type with a finalizer that notes, per call, whether the calling thread
held the pool process's ``state_lock``: the finalizers of finishes written in batches
run beside the timer thread that shares the state connection (tests/test_batching.py)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings

from batchtasks import BatchTaskPlugin, batchtask, finalizer

if TYPE_CHECKING:
    from batchtasks.models import BatchTask

TYPE = "tests.held_finalized"


def noted_folder() -> Path:
    return Path(settings.MEDIA_ROOT) / "batchtasks" / "held-finalized"


@batchtask(TYPE, description="Succeed at once (fail with params['fail']); finalized.")
class Held(BatchTaskPlugin):
    """A success is held and written with others; a failure is written at once."""

    def run(self, params: Any) -> str:
        if isinstance(params, dict) and params.get("fail"):
            raise ValueError("asked to fail")
        return "done"


@finalizer(TYPE)
def note(task: BatchTask) -> None:
    """``<pid> <thread> <1 if it held state_lock>``, a line per call."""
    from batchtasks.worker.progress import state_lock

    folder = noted_folder()
    folder.mkdir(parents=True, exist_ok=True)
    owned = int(state_lock._is_owned())  # type: ignore[attr-defined]
    with open(folder / str(task.pk), "a") as out:
        out.write(f"{os.getpid()} {threading.current_thread().name} {owned}\n")
