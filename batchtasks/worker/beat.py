"""The bridge from Celery beat (django-celery-beat's ``PeriodicTask`` rows, or any beat):
a Celery task that submits a batch task once per tick, however many beats send it.

Point a periodic task at ``batchtasks.submit_scheduled`` with the arguments
``["reports.users_csv", {"month": 5}]`` (the type and its parameters). The tick is the
database's time rounded to the nearest ``tick_seconds`` (default 60: a beat's minute);
it is claimed as a tick row of the schedule row ``celery-beat:<periodic task name>``
(django-celery-beat sends that name in the message's ``periodic_task_name`` header; a
``schedule`` argument names it otherwise), so a second beat sending the same tick, or a
message delivered twice, submits nothing more. The native schedules
(``BATCHTASKS["SCHEDULES"]``, the admin) remain the way to recommend: they need no beat.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from ..services.schedule_rows import bridge_claim

logger = logging.getLogger(__name__)

SUBMIT_SCHEDULED_TASK_NAME = "batchtasks.submit_scheduled"
#: Where the bridge's schedule rows get their names.
PREFIX = "celery-beat:"


def _periodic_name(request: Any) -> str | None:
    name = getattr(request, "periodic_task_name", None)
    headers = getattr(request, "headers", None) or {}
    return name or headers.get("periodic_task_name")


@shared_task(name=SUBMIT_SCHEDULED_TASK_NAME, bind=True, ignore_result=True, typing=False)
def submit_scheduled(
    self: Any,
    type: str,
    params: Any = None,
    *,
    schedule: str | None = None,
    tick_seconds: int = 60,
    overlap: bool = True,
    priority: int | None = None,
    description: str = "",
) -> int | None:
    """Submit ``type`` with ``params`` for this tick unless it was submitted already; the
    new task's id, or ``None``."""
    name = PREFIX + (schedule or _periodic_name(self.request) or type)
    task = bridge_claim(
        name,
        type,
        {} if params is None else params,
        tick_seconds=max(1, int(tick_seconds)),
        overlap=overlap,
        options={"priority": priority, "description": description},
    )
    if task is None:
        logger.info("batchtasks beat tick already claimed schedule=%s", name)
        return None
    logger.info("batchtasks beat submitted schedule=%s task=%s", name, task.pk)
    return task.pk
