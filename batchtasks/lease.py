"""Running attempts and their leases, and the workers that hold them.

A claimed attempt holds a lease that its worker's heartbeat renews; an attempt whose
process is gone (the pool process died, hit the hard time limit, or the whole worker
was killed) is found here and ended through ``transitions``: run again while attempts
remain, else failed with an error that says what happened and where.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connections
from django.utils import timezone

from . import retries, transitions
from .models import BatchTask, BatchWorker, WorkerState
from .sql import Tables, db_datetime
from .states import TaskState

logger = logging.getLogger(__name__)

LEASE_LOST = "batchtasks.LeaseExpired"
WORKER_LOST = "billiard.exceptions.WorkerLostError"
TIME_LIMIT = "billiard.exceptions.TimeLimitExceeded"


@dataclass(frozen=True)
class HeldAttempt:
    """A running attempt, with what deciding its fate needs."""

    task_id: int
    attempt: int
    worker: str
    queue: str
    started_at: datetime | None
    timeout: int | None
    max_attempts: int
    retry_backoff: int
    retry_backoff_max: int

    def overran(self, now: datetime) -> bool:
        """Whether it has run past its type's hard timeout."""
        return bool(
            self.timeout
            and self.started_at
            and now >= self.started_at + timedelta(seconds=self.timeout)
        )


def _held(where: str, params: list[Any], using: str, limit: int = 1000) -> list[HeldAttempt]:
    connection = connections[using]
    t = Tables(connection)
    sql = (
        "SELECT t.id, t.attempt, t.worker, t.queue, t.started_at, d.timeout, d.max_attempts, "
        f"d.retry_backoff, d.retry_backoff_max FROM {t.task} t "
        f"JOIN {t.definition} d ON d.id = t.definition_id "
        f"WHERE t.state = '{TaskState.RUNNING}' AND {where} ORDER BY t.id LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, limit])
        return [HeldAttempt(*row) for row in cursor.fetchall()]


def held_attempt(task_id: int, attempt: int, *, using: str) -> HeldAttempt | None:
    """The attempt if it is still running."""
    found = _held("t.id = %s AND t.attempt = %s", [task_id, attempt], using, 1)
    return found[0] if found else None


def running_on(worker: str, *, using: str) -> list[HeldAttempt]:
    """The attempts the database says ``worker`` is running."""
    return _held("t.worker = %s", [worker], using)


def expired_leases(*, using: str, limit: int = 1000) -> list[HeldAttempt]:
    """Running attempts whose lease ran out: their worker stopped renewing it."""
    now = db_datetime(connections[using], timezone.now())
    return _held("t.lease_expires_at < %s", [now], using, limit)


def cancel_requested(task_id: int, *, using: str) -> bool:
    """Whether a cancel was asked for (a finished or missing task counts as cancelled)."""
    row = (
        BatchTask.objects.using(using)
        .filter(pk=task_id)
        .values_list("cancel_requested", "state")
        .first()
    )
    return row is None or bool(row[0]) or row[1] != TaskState.RUNNING


def time_limit_message(held: HeldAttempt) -> str:
    return f"hard time limit of {held.timeout} s exceeded; worker {held.worker} stopped it"


def worker_lost_message(held: HeldAttempt) -> str:
    return f"the pool process running it on {held.worker} ended before it finished"


def lose(held: HeldAttempt, error_type: str, message: str, *, using: str) -> bool:
    """End an attempt whose process is gone: again while attempts remain, else failed.

    A lost worker or lease is not the task's fault, so it runs again at once; a hard
    timeout is, so it waits its backoff like any failure.
    """
    now = timezone.now()
    if held.attempt >= held.max_attempts:
        retry_at = None
    elif error_type == TIME_LIMIT:
        retry_at = retries.retry_at(
            held.attempt, held.max_attempts, held.retry_backoff, held.retry_backoff_max, now=now
        )
    else:
        retry_at = now
    applied = transitions.lose_attempt(
        held.task_id, held.attempt, error_type, message, retry_at=retry_at, using=using
    )
    if applied:
        logger.warning(
            "batchtasks attempt lost task=%s attempt=%s worker=%s reason=%s again=%s",
            held.task_id,
            held.attempt,
            held.worker,
            error_type,
            retry_at is not None,
        )
    return applied


def register_worker(name: str, *, queues: list[str], concurrency: int, using: str) -> BatchWorker:
    """Record a worker as online (a restarted worker takes over its row)."""
    now = timezone.now()
    worker, _ = BatchWorker.objects.using(using).update_or_create(
        name=name,
        defaults={
            "host": name.rpartition("@")[2] or os.uname().nodename,
            "pid": os.getpid(),
            "queues": queues,
            "concurrency": concurrency,
            "tasks_in_hand": 0,
            "state": WorkerState.ONLINE,
            "started_at": now,
            "last_seen_at": now,
        },
    )
    return worker


def worker_seen(
    name: str, *, in_hand: int, cpu: float | None, memory: int | None, using: str
) -> None:
    """A worker's heartbeat: what it holds and uses now."""
    BatchWorker.objects.using(using).filter(name=name).update(
        tasks_in_hand=in_hand,
        cpu_percent=cpu,
        memory_bytes=memory,
        state=WorkerState.ONLINE,
        last_seen_at=timezone.now(),
    )


def worker_stopped(name: str, *, using: str) -> None:
    """A worker shut down cleanly."""
    BatchWorker.objects.using(using).filter(name=name).update(
        state=WorkerState.STOPPED, tasks_in_hand=0, last_seen_at=timezone.now()
    )


def workers_gone(*, silent_for: float, using: str) -> int:
    """Mark online workers that have not been heard from for ``silent_for`` s offline."""
    cutoff = timezone.now() - timedelta(seconds=silent_for)
    return (
        BatchWorker.objects.using(using)
        .filter(state=WorkerState.ONLINE, last_seen_at__lt=cutoff)
        .update(state=WorkerState.OFFLINE)
    )
