"""``django.tasks`` functions run by the BatchTasksBackend in tests/test_django_tasks.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.dispatch import receiver

from batchtasks.backends.django_tasks import FRAMEWORK, task_finished, task_started

if FRAMEWORK == "django.tasks":
    from django.tasks import task  # type: ignore[import-not-found,unused-ignore]
else:
    from django_tasks import task


class PrinterOnFire(Exception):
    """Raised by ``explode``."""


@task
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@task
def explode(message: str) -> None:
    """Fail with ``PrinterOnFire``."""
    raise PrinterOnFire(message)


@task
def stamp() -> float:
    """The time it ran."""
    return time.time()


@task
async def greet(name: str) -> str:
    """Greet, asynchronously."""
    await asyncio.sleep(0.01)
    return f"Hello, {name}!"


@task(takes_context=True)
def which_attempt(context: Any) -> int:
    """The attempt number Django's context reports."""
    return int(context.attempt)


@task(takes_context=True)
def count_to(context: Any, steps: int, pause: float = 0.0) -> int:
    """Count with progress; stop when cancelled."""
    for step in range(1, steps + 1):
        context.check_cancelled()
        time.sleep(pause)
        context.progress(step * 100 / steps, f"{step} of {steps}")
    return steps


@receiver(task_started)
@receiver(task_finished)
def note_signal(sender: Any, task_result: Any, signal: Any, **kwargs: Any) -> None:
    """Note each signal a worker sends in ``MEDIA_ROOT/django-task-signals``."""
    name = "started" if signal is task_started else "finished"
    with (Path(settings.MEDIA_ROOT) / "django-task-signals").open("a") as notes:
        notes.write(f"{name} {task_result.id} {task_result.status}\n")
