"""Run the due ticks of schedules, exactly once each across the cluster.

Any number of processes may call ``run_due`` at once (every worker's agent does, every
``SCHEDULE_INTERVAL``): a tick is claimed by inserting its ``(schedule, tick)`` row, whose
unique constraint lets one insert win, in the same transaction as the task it submits;
a process that loses inserts nothing and submits nothing. The schedule row is also
locked (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) so that two processes rarely even try
the same schedule at once. Every time is the database's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connections, router, transaction

from ..core.conf import get_settings
from ..core.exceptions import BatchTasksError
from ..core.schedules import EPOCH, Timing, last_ticks, next_tick
from ..core.states import UNFINISHED_STATES
from ..db.sql import database_now, db_datetime
from ..models import BatchTask, BatchTaskSchedule, BatchTaskScheduleTick, CatchUp, TickOutcome
from .submit import submit

logger = logging.getLogger(__name__)

#: Schedules one pass looks at, at most (the rest wait for the next pass).
PASS_LIMIT = 500
#: On-time ticks of one schedule claimed in one pass, at most.
ON_TIME_LIMIT = 1000
#: Tick rows kept per schedule (the newest; older ones guard nothing: claims only ever
#: insert ticks from ``next_run_at`` on). Pruned by every ``PRUNE_EVERY``-th claim.
TICKS_KEPT = 100
PRUNE_EVERY = 50


@dataclass
class Pass:
    """What one ``run_due`` pass did."""

    submitted: list[int] = field(default_factory=list)
    #: Ticks claimed but run without a task (overlap) or whose submit failed.
    skipped: int = 0
    failed: int = 0
    #: Missed ticks not run, by the schedules' ``catch_up``.
    dropped: int = 0
    #: Seconds from the pass's database time to the earliest next tick (None: none).
    next_in: float | None = None


def _db(using: str | None) -> str:
    return using or router.db_for_write(BatchTaskSchedule)


def run_due(*, using: str | None = None, now: datetime | None = None) -> Pass:
    """Claim and run the due ticks of every enabled schedule (``now`` for tests: the
    database's clock otherwise)."""
    db = _db(using)
    now = now or database_now(db)
    done = Pass()
    due = BatchTaskSchedule.objects.using(db).filter(enabled=True, next_run_at__lte=now)
    for pk in due.order_by("next_run_at").values_list("pk", flat=True)[:PASS_LIMIT]:
        try:
            _run_schedule(pk, now, db, done)
        except Exception:
            logger.exception("batchtasks schedule pass failed schedule_id=%s", pk)
    upcoming = (
        BatchTaskSchedule.objects.using(db)
        .filter(enabled=True, next_run_at__isnull=False)
        .order_by("next_run_at")
        .values_list("next_run_at", flat=True)
        .first()
    )
    if upcoming is not None:
        done.next_in = max(0.0, (upcoming - now).total_seconds())
    return done


def _run_schedule(pk: int, now: datetime, db: str, done: Pass) -> None:
    with transaction.atomic(using=db):
        locked = BatchTaskSchedule.objects.using(db).select_for_update(skip_locked=True)
        row = locked.filter(pk=pk, enabled=True, next_run_at__lte=now).first()
        if row is None:  # another process has it, or ran it already
            return
        try:
            timing = row.timing
        except BatchTasksError as exc:
            logger.error("batchtasks schedule=%s cannot tick: %s", row.name, exc)
            _save(row, db, next_run_at=None)
            return
        assert row.next_run_at is not None
        ticks, dropped = ticks_to_run(row, timing, row.next_run_at, now)
        done.dropped += dropped
        if dropped:
            logger.info(
                "batchtasks schedule=%s missed=%s catch_up=%s", row.name, dropped, row.catch_up
            )
        busy = not row.overlap and unfinished(row.last_task_id, db)
        for tick in ticks:
            claim(row, tick, now, db, done, busy=busy)
        _save(row, db, next_run_at=next_tick(timing, now))


def ticks_to_run(
    row: BatchTaskSchedule, timing: Timing, first: datetime, now: datetime
) -> tuple[list[datetime], int]:
    """The ticks from ``first`` to ``now`` to run by the schedule's ``catch_up``, and how
    many missed ones are dropped. A tick within ``SCHEDULE_GRACE`` of ``now`` is on time
    and always runs; older ones were missed (an outage, every worker stopped)."""
    after = first - timedelta(microseconds=1)
    edge = max(after, now - timedelta(seconds=get_settings().SCHEDULE_GRACE))
    on_time = last_ticks(timing, edge, now, ON_TIME_LIMIT)
    if edge <= after:
        return on_time, 0
    wanted = {CatchUp.ALL: row.catch_up_limit, CatchUp.LATEST: 0 if on_time else 1}
    limit = wanted.get(CatchUp(row.catch_up), 0)
    missed = last_ticks(timing, after, edge, max(limit, 1)) if limit else []
    counted = _count_missed(timing, after, edge, len(missed))
    return missed + on_time, counted - len(missed)


def _count_missed(timing: Timing, after: datetime, edge: datetime, at_least: int) -> int:
    """How many ticks fall in ``(after, edge]`` (for the log; cron ticks up to 1,000)."""
    if timing.every is not None:
        seconds = (edge - EPOCH).total_seconds(), (after - EPOCH).total_seconds()
        return int(seconds[0] // timing.every) - int(seconds[1] // timing.every)
    return max(at_least, len(last_ticks(timing, after, edge, 1000)))


def unfinished(task_id: int | None, db: str) -> bool:
    if task_id is None:
        return False
    return BatchTask.objects.using(db).filter(pk=task_id, state__in=UNFINISHED_STATES).exists()


def _save(row: BatchTaskSchedule, db: str, **values: object) -> None:
    for name, value in values.items():
        setattr(row, name, value)
    BatchTaskSchedule.objects.using(db).filter(pk=row.pk).update(
        next_run_at=row.next_run_at, last_run_at=row.last_run_at, last_task_id=row.last_task_id
    )


def claim(
    row: BatchTaskSchedule, tick: datetime, now: datetime, db: str, done: Pass, *, busy: bool
) -> BatchTask | None:
    """Insert the row of ``tick``; if this process's insert won, submit the schedule's task
    (or record why not) in the caller's transaction. The task, if one was submitted."""
    tick_id = _insert_tick(row.pk, tick, now, db)
    if tick_id is None:
        return None
    if tick_id % PRUNE_EVERY == 0:
        prune_ticks(row.pk, using=db)
    ticks = BatchTaskScheduleTick.objects.using(db).filter(pk=tick_id)
    if busy:
        done.skipped += 1
        ticks.update(outcome=TickOutcome.SKIPPED_OVERLAP)
        return None
    try:
        with transaction.atomic(using=db):
            task = submit(
                row.type_name,
                row.params,
                owner=row.owner,
                priority=row.priority,
                description=row.description or f"schedule {row.name}",
                using=db,
            )
    except BatchTasksError as exc:
        logger.error("batchtasks schedule=%s tick=%s not submitted: %s", row.name, tick, exc)
        done.failed += 1
        ticks.update(outcome=TickOutcome.FAILED, message=str(exc)[:2000])
        return None
    ticks.update(task_id=task.pk)
    done.submitted.append(task.pk)
    row.last_task_id, row.last_run_at = task.pk, now
    return task


def _insert_tick(schedule_id: int, tick: datetime, now: datetime, db: str) -> int | None:
    """The new tick row's id, or ``None`` if another process inserted it first."""
    connection = connections[db]
    table = connection.ops.quote_name(BatchTaskScheduleTick._meta.db_table)
    sql = (
        f"INSERT INTO {table} (schedule_id, tick, outcome, message, claimed_at) "
        "VALUES (%s, %s, %s, '', %s) ON CONFLICT (schedule_id, tick) DO NOTHING RETURNING id"
    )
    values = [
        schedule_id,
        db_datetime(connection, tick),
        TickOutcome.SUBMITTED.value,
        db_datetime(connection, now),
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        inserted = cursor.fetchone()
    return None if inserted is None else int(inserted[0])


def prune_ticks(schedule_id: int, *, using: str) -> int:
    """Delete the schedule's tick rows older than its ``TICKS_KEPT`` newest."""
    connection = connections[using]
    table = connection.ops.quote_name(BatchTaskScheduleTick._meta.db_table)
    sql = (
        f"DELETE FROM {table} WHERE schedule_id = %s AND tick < (SELECT tick FROM {table} "
        "WHERE schedule_id = %s ORDER BY tick DESC LIMIT 1 OFFSET %s)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [schedule_id, schedule_id, TICKS_KEPT - 1])
        return cursor.rowcount
