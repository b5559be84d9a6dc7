"""``django.tasks`` functions for tests/test_django_task_surfaces.py.

Each one notes its runs as ``start|end <pid> <time>`` lines in
``MEDIA_ROOT/batchtasks/runs/<task id>`` (read by ``tests.conftest.runs_of``) and waits,
between them, until the test opens its gate: the file ``MEDIA_ROOT/gates/<task id>``.
So a test sees a task running for as long as it needs to, and never by timing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from batchtasks.backends.django_tasks import FRAMEWORK

if FRAMEWORK == "django.tasks":
    from django.tasks import task  # type: ignore[import-not-found,unused-ignore]
else:
    from django_tasks import task

#: The longest a function waits for its gate: a test that forgot it does not hang a worker.
GATE_TIMEOUT = 120.0


def gate(media_root: Path, task_id: int | str) -> Path:
    """The file whose existence lets the task's run go on."""
    return media_root / "gates" / str(int(task_id))


def _record(task_id: int, event: str) -> None:
    folder = Path(settings.MEDIA_ROOT) / "batchtasks" / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / str(task_id)).open("a") as notes:
        notes.write(f"{event} {os.getpid()} {time.time():.6f}\n")


def _run_behind_gate(context: Any) -> int:
    """Note the start, wait for the gate, note the end; the task's id."""
    task_id = int(context.task_result.id)
    _record(task_id, "start")
    deadline = time.monotonic() + GATE_TIMEOUT
    while not gate(Path(settings.MEDIA_ROOT), task_id).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate of task {task_id} was never opened")
        time.sleep(0.05)
    time.sleep(0.2)  # still running a moment after its gate opens: overlaps show
    _record(task_id, "end")
    return task_id


@task(takes_context=True)
def gated(context: Any, label: str) -> str:
    """Run until the test opens the gate; say which label it ran with."""
    _run_behind_gate(context)
    return f"{label} done"


@task(takes_context=True)
def limited_by_options(context: Any) -> int:
    """Limited to 2 at once by ``TASKS["default"]["OPTIONS"]["TYPES"]`` (tests/settings.py)."""
    return _run_behind_gate(context)


@task(takes_context=True)
def limited_by_settings(context: Any) -> int:
    """Limited to 2 at once by ``BATCHTASKS["TYPES"]``, over 3 in OPTIONS (tests/settings.py)."""
    return _run_behind_gate(context)
