"""The Celery side: the one task that runs a batch task by id, and publishing it."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from . import runner

RUN_TASK_NAME = "batchtasks.run"


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


def message_id(task_id: int, attempt: int) -> str:
    """The Celery task id of a batch task's message: readable in Flower and in logs."""
    return f"batchtask-{task_id}-{attempt}"


def publish(queue: str, tasks: list[tuple[int, int]]) -> None:
    """Publish one message per ``(task id, attempt)`` to ``queue`` over one connection."""
    app = run_batch_task.app
    with app.producer_or_acquire() as producer:
        for task_id, attempt in tasks:
            run_batch_task.apply_async(
                (task_id,),
                queue=queue,
                routing_key=queue,
                task_id=message_id(task_id, attempt),
                producer=producer,
            )
