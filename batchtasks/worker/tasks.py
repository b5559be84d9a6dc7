"""The one Celery task: run an attempt of a batch task, named by its id and attempt."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from ..transport.publish import RUN_TASK_NAME, parse_message_id
from . import runner


@shared_task(
    name=RUN_TASK_NAME,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    typing=False,
)
def run_batch_task(self: Any, task_id: int, attempt: int | None = None) -> None:
    """Claim attempt ``attempt`` of the ``BatchTask`` row ``task_id`` and run it (the
    message is only a claim check). Messages of older releases carry only the id: their
    attempt is read from the message id."""
    if attempt is None:
        parsed = parse_message_id(self.request.id or "")
        if parsed is None or parsed[0] != int(task_id):
            return
        attempt = parsed[1]
    runner.execute(int(task_id), int(attempt), worker=self.request.hostname or "unknown")
