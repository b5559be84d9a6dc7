"""The sweeper: what no single worker can see. One worker at a time runs it, every
``SWEEP_INTERVAL`` seconds, and ``manage.py batchtasks sweep`` runs it once.

- Running attempts whose lease expired (the worker was killed, ran out of memory or
  lost its host) run again while attempts remain, else fail saying which worker held
  them.
- Queued tasks whose broker message was lost (Redis restarted empty) are published
  again: a task queued longer than ``REPUBLISH_AFTER`` while its broker queue is empty
  has no message anywhere. A duplicate is harmless, the claim is guarded.
- Finished tasks older than their type's retention are deleted.
- Workers not heard from for a lease period are marked offline.
"""

from __future__ import annotations

import logging
import zlib
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import connections
from django.utils import timezone

from . import lease, transitions
from .conf import get_settings
from .dispatch import dispatch_queue, publish_or_unqueue
from .models import BatchTask, BatchTaskDefinition
from .publish import Run
from .sql import Tables, db_datetime, states_sql
from .states import FINAL_STATES, TaskState
from .tasks import broker_depth

logger = logging.getLogger(__name__)

LOCK_KEY = zlib.crc32(b"batchtasks.sweep")
BATCH = 1000


@dataclass
class SweepReport:
    """What one sweep did."""

    requeued: int = 0
    failed: int = 0
    republished: int = 0
    purged: int = 0
    offline: int = 0
    queues: set[str] = field(default_factory=set)

    def __str__(self) -> str:
        return (
            f"requeued={self.requeued} failed={self.failed} republished={self.republished} "
            f"purged={self.purged} offline={self.offline}"
        )


@contextmanager
def cluster_lock(using: str) -> Iterator[bool]:
    """Whether this process may sweep now: a PostgreSQL advisory lock, held by its session,
    so a sweeper that dies releases it with its connection. Other databases: always."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        yield True
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY])
        locked = bool(cursor.fetchone()[0])
    try:
        yield locked
    finally:
        if locked:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])


def sweep(*, using: str) -> SweepReport | None:
    """One sweep of the whole cluster; ``None`` if another process is sweeping."""
    with cluster_lock(using) as locked:
        if not locked:
            return None
        report = SweepReport()
        expire_leases(report, using=using)
        republish_lost(report, using=using)
        report.purged = purge(using=using)
        report.offline = lease.workers_gone(silent_for=get_settings().LEASE_SECONDS, using=using)
    for queue in sorted(report.queues):  # refill the slots freed above at once
        dispatch_queue(queue, using=using)
    if report.requeued or report.failed or report.republished or report.offline:
        logger.warning("batchtasks sweep %s", report)
    return report


def expire_leases(report: SweepReport, *, using: str) -> None:
    """Attempts whose worker stopped renewing their lease run again or fail."""
    for held in lease.expired_leases(using=using, limit=BATCH):
        message = (
            f"lease lost: worker {held.worker or '?'} stopped renewing it "
            f"(killed, out of memory, or its host is gone)"
        )
        if lease.lose(held, lease.LEASE_LOST, message, using=using):
            if held.attempt < held.max_attempts:
                report.requeued += 1
            else:
                report.failed += 1
            report.queues.add(held.queue)


def republish_lost(report: SweepReport, *, using: str) -> None:
    """Publish again the queued tasks whose message is nowhere (see the module text)."""
    connection = connections[using]
    t = Tables(connection)
    cutoff = timezone.now() - timedelta(seconds=get_settings().REPUBLISH_AFTER)
    sql = (
        f"SELECT t.queue, t.id, t.attempt, d.timeout, d.soft_timeout FROM {t.task} t "
        f"JOIN {t.definition} d ON d.id = t.definition_id "
        f"WHERE t.state = {states_sql(TaskState.QUEUED)} AND t.queued_at < %s "
        "ORDER BY t.queued_at LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [db_datetime(connection, cutoff), BATCH])
        rows = cursor.fetchall()
    stale: dict[str, list[Run]] = defaultdict(list)
    for queue, task_id, attempt, timeout, soft in rows:
        stale[queue].append(Run(task_id, attempt, timeout, soft))
    for queue, runs in stale.items():
        if broker_depth(queue) != 0:  # messages still wait there: not lost, or unknown
            continue
        # Restart the clock, so that each lost message is replaced once per period.
        still = transitions.requeued_now([run.task_id for run in runs], using=using)
        runs = [run for run in runs if run.task_id in still]
        if runs:
            publish_or_unqueue(queue, runs, using)
            report.republished += len(runs)


def purge(*, using: str) -> int:
    """Delete finished tasks older than their type's retention; return how many."""
    from .transitions import delete_tasks

    now = timezone.now()
    deleted = 0
    kept = BatchTaskDefinition.objects.using(using).filter(retention__isnull=False)
    for definition_id, retention in kept.values_list("id", "retention"):
        ids = list(
            BatchTask.objects.using(using)
            .filter(
                definition_id=definition_id,
                state__in=FINAL_STATES,
                finished_at__lt=now - timedelta(seconds=retention or 0),
            )
            .values_list("pk", flat=True)[:BATCH]
        )
        deleted += delete_tasks(ids, using=using)
    return deleted
