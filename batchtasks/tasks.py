"""The Celery side: the one task that runs a batch task by id, and publishing it."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from . import publish as publishing
from . import runner
from .publish import RUN_TASK_NAME, Run, message_id

__all__ = ["RUN_TASK_NAME", "Run", "broker_depth", "message_id", "publish", "run_batch_task"]


@shared_task(
    name=RUN_TASK_NAME,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    typing=False,
)
def run_batch_task(self: Any, task_id: int) -> None:
    """Claim the ``BatchTask`` row ``task_id`` and run it (the message is only a claim check)."""
    runner.execute(int(task_id), worker=self.request.hostname or "unknown")


def broker_depth(queue: str) -> int | None:
    """Messages ready in ``queue`` on the current Celery app's broker (``None``: unknown)."""
    return publishing.broker_depth(run_batch_task.app, queue)


def publish(queue: str, tasks: list[Run] | list[tuple[int, int]]) -> None:
    """Publish one message per run (or ``(task id, attempt)``) to ``queue``."""
    publishing.publish(run_batch_task.app, queue, [Run(*t) for t in tasks])
