"""The sweeper: what no single worker can see. One worker at a time runs it, every
``SWEEP_INTERVAL`` seconds, and ``manage.py batchtasks sweep`` runs it once.

- Running attempts whose lease expired (the worker was killed, ran out of memory or
  lost its host) are lost runs: they run again at once while the type's
  ``max_lost_runs`` allows, else fail saying which worker held them; a cancel asked
  for meanwhile ends them cancelled.
- Attempts of worker boots on this machine whose process is gone are ended the same
  way, without waiting for their leases.
- Queued tasks whose message may be lost (Redis restarted empty, a crash between
  commit and publish) are published again once they have waited ``REPUBLISH_AFTER``
  seconds unclaimed, then after twice as long, and so on. Messages are fenced by
  attempt, so a duplicate runs nothing.
- Finished tasks older than their type's retention are deleted (once their finalizers
  have run).
- Final tasks whose finalizers are due run them (``services.finalize``): cancels and
  skips made outside a worker, runs that crashed or failed. Each is claimed on its
  own, so this part needs no cluster lock and runs after it is released.
- With priority aging on (``PRIORITY_AGING`` seconds per point), due waiting tasks get
  a point of priority per that many seconds waited, up to ``Priority.IMMEDIATE``, so
  that a flood of higher priorities cannot hold them back for ever (``age_waiting``).
- Workers not heard from for a lease period are marked offline; rows of workers
  stopped or offline for a week are deleted.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.db import DatabaseError, connections, transaction

from .. import transitions
from ..core.conf import get_settings
from ..core.states import PRIORITY_MAX, Isolation, TaskState
from ..db.connections import lock_db
from ..db.sql import Clock, Tables, states_sql
from ..models import BatchTaskDefinition
from ..transport.publish import Run
from . import finalize, leases, workers
from .dispatch import dispatch_queue, publish_or_unqueue

logger = logging.getLogger(__name__)

LOCK_KEY = zlib.crc32(b"batchtasks.sweep")
BATCH = 1000
#: Most tasks of a type one purge statement deletes. On 100,000 expired rows chunks of
#: 500 to 5,000 cost about the same per row (16-31 ms per 1,000 between runs), 250
#: cost more (39 ms); 1,000 keeps each transaction near 30 ms.
PURGE_CHUNK = 1000
#: Pause after each purge chunk, as a multiple of the chunk's own time. Purging without
#: pauses, concurrent submits ran at 3-8x their p50 without a purge; with 1.0 at 1.3-2.3x
#: (``make bench-scale``, step e; see docs/figures/benchmarks.md, Scale).
PURGE_PAUSE = 1.0
#: Most waiting tasks one sweep raises by priority aging, those it raises highest first.
AGE_BATCH = 1000
#: Republishing waits at most ``REPUBLISH_AFTER`` times this between two publishes.
REPUBLISH_BACKOFF_MAX = 64
#: Seconds the rows of stopped or offline workers are kept.
WORKER_ROWS_KEPT = 7 * 24 * 3600


@dataclass
class SweepReport:
    """What one sweep did."""

    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    reaped: int = 0
    republished: int = 0
    purged: int = 0
    offline: int = 0
    finalized: int = 0
    aged: int = 0
    queues: set[str] = field(default_factory=set)

    def __str__(self) -> str:
        return (
            f"requeued={self.requeued} failed={self.failed} cancelled={self.cancelled} "
            f"reaped={self.reaped} republished={self.republished} purged={self.purged} "
            f"offline={self.offline} finalized={self.finalized} aged={self.aged}"
        )


@contextmanager
def cluster_lock(using: str) -> Iterator[bool]:
    """Whether this process may sweep now, for as long as the block runs. PostgreSQL: a
    transaction-scoped advisory lock, taken in a transaction of a connection of its own
    that stays open while the sweep works and commits on its others; other databases:
    always.

    A sweep is many transactions (each lost lease, each purge chunk, publishes between),
    so no one of them can hold the lock. A session lock would outlive the transaction
    that took it, but behind a pooler in transaction mode (PgBouncer) that session
    serves other clients next: a second sweeper was handed the lock too, and the unlock,
    sent on another server connection, left it held. An open transaction keeps its
    server connection, so its lock stays this sweeper's, and ends with the sweeper: a
    sweeper that dies (its connection closes) or fails (the transaction rolls back)
    releases it at once. So does a sweeper frozen mid-sweep (SIGSTOP, ``docker pause``, a
    stalled VM), whose connection stays open: its transaction may sit idle for at most
    ``LEASE_SECONDS`` (``idle_in_transaction_session_timeout``), then the server ends it,
    and with it the lock, the same time after which the frozen worker's own attempts are
    taken for lost. If the holding connection itself is lost, the lock goes with it; then
    another sweeper may start before this sweep ends, which its guarded writes make
    harmless, and this one ends its sweep with a warning."""
    if connections[using].vendor != "postgresql":
        yield True
        return
    holder = lock_db(using)
    idle_ms = max(1000, int(get_settings().LEASE_SECONDS * 1000))
    swept = False
    try:
        with transaction.atomic(using=holder), connections[holder].cursor() as cursor:
            cursor.execute(
                "SELECT set_config('idle_in_transaction_session_timeout', %s, true), "
                "pg_try_advisory_xact_lock(%s)",
                [str(idle_ms), LOCK_KEY],
            )
            yield bool(cursor.fetchone()[1])
            swept = True
    except DatabaseError:
        if not swept:
            raise
        # The lock's session was ended under it (idle past a lease, or the server went):
        # the sweep's own work is committed on its other connections already.
        logger.warning("batchtasks sweep outlived its lock (idle for more than a lease)")
        connections[holder].close()


def sweep(*, using: str, instance: str = "", finalize_due: bool = True) -> SweepReport | None:
    """One sweep of the whole cluster; ``None`` if another process is sweeping.
    ``instance``: the sweeping worker's own, which is alive. ``finalize_due=False``
    leaves the due finalizers to the caller (a worker runs them in a thread of their
    own, so that a slow finalizer cannot hold up its heartbeat)."""
    with cluster_lock(using) as locked:
        if not locked:
            return None
        report = SweepReport()
        expire_leases(report, using=using)
        freed = workers.reap_dead_instances(workers.process_space(), exclude=instance, using=using)
        report.reaped = len(freed)
        report.queues.update(freed)
        republish_lost(report, using=using)
        report.aged = age_waiting(using=using)
        report.purged = purge(using=using)
        report.offline = workers.workers_gone(silent_for=get_settings().LEASE_SECONDS, using=using)
        workers.forget_workers(older_than=WORKER_ROWS_KEPT, using=using)
    for queue in sorted(report.queues):  # refill the slots freed above at once
        dispatch_queue(queue, using=using)
    if finalize_due:  # for about one sweep interval, so as not to delay the next sweep
        report.finalized = finalize.run_due(using=using, budget=get_settings().SWEEP_INTERVAL)
    if any((report.requeued, report.failed, report.cancelled, report.reaped)) or any(
        (report.republished, report.offline)
    ):
        logger.warning("batchtasks sweep %s", report)
    return report


def expire_leases(report: SweepReport, *, using: str) -> None:
    """Attempts whose worker stopped renewing their lease are lost runs."""
    for held in leases.expired_leases(using=using, limit=BATCH):
        message = (
            f"lease lost: worker {held.worker or '?'} stopped renewing it "
            f"(killed, out of memory, or its host is gone)"
        )
        ended = leases.lose(held, leases.LEASE_LOST, message, using=using, lease_expired=True)
        if ended is None:
            continue
        if ended.runs_again:
            report.requeued += 1
        elif ended.state == TaskState.CANCELLED:
            report.cancelled += 1
        else:
            report.failed += 1
        report.queues.add(held.queue)


def republish_lost(report: SweepReport, *, using: str) -> None:
    """Publish again the queued tasks whose message may be lost (see the module text)."""
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    waited = clock.seconds_since("COALESCE(t.republished_at, t.queued_at)")
    factor = (
        f"POWER(2, LEAST(t.republish_count, {REPUBLISH_BACKOFF_MAX.bit_length() - 1}))"
        if connection.vendor == "postgresql"
        else f"(1 << MIN(t.republish_count, {REPUBLISH_BACKOFF_MAX.bit_length() - 1}))"
    )
    sql = (
        "SELECT t.queue, t.id, t.attempt, d.timeout, d.soft_timeout, d.name, d.isolation "
        f"FROM {t.task} t "
        f"JOIN {t.definition} d ON d.id = t.definition_id "
        f"WHERE t.state IN ({states_sql(TaskState.QUEUED)}) AND {waited} > %s * {factor} "
        "ORDER BY t.queued_at LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [float(get_settings().REPUBLISH_AFTER), BATCH])
        rows = cursor.fetchall()
    stale: dict[str, list[Run]] = defaultdict(list)
    for queue, task_id, attempt, timeout, soft, name, isolation in rows:
        inline = isolation == Isolation.INLINE
        stale[queue].append(Run(task_id, attempt, timeout, soft, name, 1, inline))
    for queue, runs in stale.items():
        # Count the publish first, so that each attempt is republished once per period.
        marked = transitions.mark_republished([(r.task_id, r.attempt) for r in runs], using=using)
        runs = [run for run in runs if (run.task_id, run.attempt) in marked]
        if runs:
            publish_or_unqueue(queue, runs, using)
            report.republished += len(runs)


def age_waiting(*, using: str) -> int:
    """Priority aging: raise the priority of due waiting tasks by their wait, if
    ``PRIORITY_AGING`` is on; return how many were raised. Off, it reads nothing."""
    seconds = get_settings().PRIORITY_AGING
    if not seconds:
        return 0
    return transitions.age_priorities(seconds, PRIORITY_MAX, AGE_BATCH, using=using)


def purge(*, using: str, budget: float | None = None) -> int:
    """Delete finished tasks older than their type's retention, a chunk of each type in
    turn, until none is left or ``budget`` seconds (``PURGE_SECONDS``) are spent; return
    how many."""
    deadline = time.monotonic() + (get_settings().PURGE_SECONDS if budget is None else budget)
    kept = BatchTaskDefinition.objects.using(using).filter(retention__isnull=False)
    due = dict(kept.values_list("id", "retention"))
    deleted = 0
    while due:
        for definition_id, retention in list(due.items()):
            began = time.monotonic()
            chunk = transitions.delete_expired(
                definition_id, retention or 0, PURGE_CHUNK, using=using
            )
            deleted += chunk
            if chunk < PURGE_CHUNK:  # none left of this type (until more expire)
                del due[definition_id]
            if not due or time.monotonic() >= deadline:
                return deleted
            # A pause as long as the chunk took (PURGE_PAUSE) leaves submits room.
            pause = (time.monotonic() - began) * PURGE_PAUSE
            time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
    return deleted
