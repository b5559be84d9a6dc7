"""Task functions of Django's tests, adapted for ``BatchTasksBackend``.

Adapted from Django 6.0.10's ``tests/tasks/tasks.py`` (BSD licence, Copyright (c) Django
Software Foundation and individual contributors). Changes: ``task`` and ``TaskContext``
come from ``django.tasks`` or the ``django_tasks`` backport; each function is a batch task
type named by its module path (``tests.django_upstream.tasks.<name>``), which the workers
learn from ``BATCHTASKS["PLUGINS"]``; ``hang``, ``sleep_for`` and ``exit_task`` are
dropped: only Django's other test modules (not adapted here) use them.
"""

from __future__ import annotations

from typing import Any

from batchtasks.backends.django_tasks import FRAMEWORK

if FRAMEWORK == "django.tasks":
    from django.tasks import TaskContext, task  # type: ignore[import-not-found,unused-ignore]
else:
    from django_tasks import TaskContext, task


@task()
def noop_task(*args: Any, **kwargs: Any) -> None:
    return None


@task
def noop_task_from_bare_decorator(*args: Any, **kwargs: Any) -> None:
    return None


@task()
async def noop_task_async(*args: Any, **kwargs: Any) -> None:
    return None


@task()
def calculate_meaning_of_life() -> int:
    return 42


@task()
def failing_task_value_error() -> None:
    raise ValueError("This Task failed due to ValueError")


@task()
def failing_task_system_exit() -> None:
    raise SystemExit("This Task failed due to SystemExit")


@task()
def failing_task_keyboard_interrupt() -> None:
    raise KeyboardInterrupt("This Task failed due to KeyboardInterrupt")


@task()
def complex_exception() -> None:
    raise ValueError(ValueError("This task failed"))


@task()
def complex_return_value() -> Any:
    # Return something which isn't JSON serializable nor picklable.
    return lambda: True


@task(takes_context=True)
def get_task_id(context: Any) -> str:
    return str(context.task_result.id)


@task(takes_context=True)
def test_context(context: Any, attempt: int) -> None:
    assert isinstance(context, TaskContext)
    assert context.attempt == attempt


#: Every function above, by name (their queues are ``batch.<module path>``).
NAMES = [
    "noop_task",
    "noop_task_from_bare_decorator",
    "noop_task_async",
    "calculate_meaning_of_life",
    "failing_task_value_error",
    "failing_task_system_exit",
    "failing_task_keyboard_interrupt",
    "complex_exception",
    "complex_return_value",
    "get_task_id",
    "test_context",
]
QUEUES = [f"batch.{__name__}.{name}" for name in NAMES]
