"""Every state write of a batch task, each a guarded conditional update.

A write names the states it may leave (from ``states.ALLOWED_TRANSITIONS``) in its
``WHERE`` clause and reports whether it applied, so stale or duplicate Celery
messages and signals can never move a task backwards or finish it twice. Work
that runs once per task (claim, progress, finish) is one statement each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from .models import BatchTask, BatchTaskAttempt, BatchTaskDefinition, BatchTaskParameters
from .states import TaskState, sources_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    """A task this worker now runs, with what it needs to run it."""

    task_id: int
    attempt: int
    definition_id: int
    queue: str
    data: bytes
    codec: str


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended."""

    state: str
    result: Any = None
    error_type: str = ""
    error_message: str = ""
    error_traceback: str = ""
    #: Progress to write with the outcome: (percent, message); ``None`` keeps what is stored.
    progress: tuple[int | None, str | None] | None = None


class _Tables:
    """Quoted table names for one connection."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        quote = connection.ops.quote_name
        self.task = quote(BatchTask._meta.db_table)
        self.params = quote(BatchTaskParameters._meta.db_table)
        self.attempt = quote(BatchTaskAttempt._meta.db_table)
        self.definition = quote(BatchTaskDefinition._meta.db_table)


def states_sql(*states: str) -> str:
    """States as SQL literals, for ``state IN (…)``.

    Literals, not parameters: a prepared statement's generic plan can then still prove
    the ``WHERE state …`` predicates of the partial indexes and use them.
    """
    assert all(s.isalpha() and s in TaskState.values for s in states)
    return ", ".join(f"'{s}'" for s in states)


def _dt(connection: BaseDatabaseWrapper, value: datetime | None) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


# --- worker side -------------------------------------------------------------------
def claim(task_id: int, *, worker: str, lease_seconds: float, using: str) -> Claim | None:
    """``queued → running`` for this worker; ``None`` if the task is not queued any more."""
    connection = connections[using]
    t = _Tables(connection)
    now = timezone.now()
    sql = (
        f"UPDATE {t.task} SET state = '{TaskState.RUNNING}', started_at = %s, worker = %s, "
        "lease_expires_at = %s, progress_percent = 0, progress_message = '' "
        f"WHERE id = %s AND state IN ({states_sql(*sources_of(TaskState.RUNNING))}) "
        "RETURNING attempt, definition_id, queue, "
        f"(SELECT data FROM {t.params} WHERE task_id = {t.task}.id), "
        f"(SELECT codec FROM {t.params} WHERE task_id = {t.task}.id)"
    )
    params = [
        _dt(connection, now),
        worker,
        _dt(connection, now + timedelta(seconds=lease_seconds)),
        task_id,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    attempt, definition_id, queue, data, codec = row
    return Claim(task_id, attempt, definition_id, queue, bytes(data or b"{}"), codec or "json")


def record_progress(
    task_id: int, attempt: int, percent: int, message: str, *, using: str
) -> bool | None:
    """Write progress of a running attempt; return its cancel flag (``None`` if not running)."""
    connection = connections[using]
    t = _Tables(connection)
    sql = (
        f"UPDATE {t.task} SET progress_percent = %s, progress_message = %s "
        f"WHERE id = %s AND state = '{TaskState.RUNNING}' AND attempt = %s "
        "RETURNING cancel_requested"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [percent, message, task_id, attempt])
        row = cursor.fetchone()
    return None if row is None else bool(row[0])


def cancel_requested(task_id: int, *, using: str) -> bool:
    """Whether a cancel was asked for (a finished or missing task counts as cancelled)."""
    row = (
        BatchTask.objects.using(using)
        .filter(pk=task_id)
        .values_list("cancel_requested", "state")
        .first()
    )
    return row is None or bool(row[0]) or row[1] != TaskState.RUNNING


def finish(task_id: int, attempt: int, outcome: Outcome, *, using: str) -> bool:
    """``running → outcome.state`` for this attempt, with its attempt row; True if applied."""
    if outcome.state not in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED):
        raise ValueError(f"finish() cannot end a task as {outcome.state!r}.")
    connection = connections[using]
    t = _Tables(connection)
    now = timezone.now()
    result_field = BatchTask._meta.get_field("result")
    percent, message = outcome.progress if outcome.progress else (None, None)
    update = (
        f"UPDATE {t.task} SET state = %s, finished_at = %s, result = %s, error_type = %s, "
        "error_message = %s, error_traceback = %s, lease_expires_at = NULL, "
        "progress_percent = COALESCE(%s, progress_percent), "
        "progress_message = COALESCE(%s, progress_message) "
        f"WHERE id = %s AND state = '{TaskState.RUNNING}' AND attempt = %s "
        "RETURNING id, attempt, worker, started_at, finished_at, state, error_type, error_message"
    )
    params = [
        outcome.state,
        _dt(connection, now),
        result_field.get_db_prep_save(outcome.result, connection),
        outcome.error_type[:200],
        outcome.error_message,
        outcome.error_traceback,
        percent,
        message,
        task_id,
        attempt,
    ]
    columns = "task_id, number, worker, started_at, finished_at, outcome, error_type, error_message"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # One round trip: the attempt row is written from what the update returned.
            cursor.execute(
                f"WITH done AS ({update}) INSERT INTO {t.attempt} ({columns}) "
                "SELECT id, attempt, worker, started_at, finished_at, state, error_type, "
                "error_message FROM done",
                params,
            )
            return cursor.rowcount == 1
        with transaction.atomic(using=using):
            cursor.execute(update, params)
            row = cursor.fetchone()
            if row is None:
                return False
            cursor.execute(
                f"INSERT INTO {t.attempt} ({columns}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                list(row),
            )
    return True


def fail_running(
    task_id: int, error_type: str, message: str, traceback: str, *, using: str
) -> bool:
    """Fail whatever attempt of the task is running (used when the runner itself broke)."""
    attempt = (
        BatchTask.objects.using(using)
        .filter(pk=task_id, state=TaskState.RUNNING)
        .values_list("attempt", flat=True)
        .first()
    )
    if attempt is None:
        return False
    outcome = Outcome(
        TaskState.FAILED, error_type=error_type, error_message=message, error_traceback=traceback
    )
    return finish(task_id, attempt, outcome, using=using)


# --- dispatcher side ---------------------------------------------------------------
def admit(
    ids: list[int] | None,
    *,
    queue: str,
    using: str,
    definition_id: int | None = None,
    limit: int = 0,
    skip_locked: bool = False,
) -> list[tuple[int, int]]:
    """``new → queued`` into ``queue``: the given ids, or the next ``limit`` due tasks of a type
    in (priority, fair turn, age) order. Returns ``(id, attempt)`` of what was admitted."""
    connection = connections[using]
    t = _Tables(connection)
    now = timezone.now()
    assignments = f"state = '{TaskState.QUEUED}', queued_at = %s, queue = %s"
    values: list[Any] = [_dt(connection, now), queue]
    new = states_sql(TaskState.NEW)
    if ids is None:
        # Materialised, then matched by primary key: PostgreSQL may rescan an
        # ``IN (… LIMIT n FOR UPDATE)`` subquery, and with stale statistics it may join
        # a materialised pick against the whole backlog.
        lock = " FOR UPDATE SKIP LOCKED" if skip_locked else ""
        by_id = (
            "= ANY(ARRAY(SELECT id FROM picked))"
            if connection.vendor == "postgresql"
            else ("IN (SELECT id FROM picked)")
        )
        sql = (
            f"WITH picked AS MATERIALIZED (SELECT id FROM {t.task} WHERE definition_id = %s "
            f"AND state = {new} AND (run_after IS NULL OR run_after <= %s) "
            f"ORDER BY priority DESC, fair_round, id LIMIT %s{lock}) "
            f"UPDATE {t.task} SET {assignments} WHERE id {by_id} AND state = {new} "
            "RETURNING id, attempt"
        )
        params = [definition_id, _dt(connection, now), limit, *values]
    else:
        if not ids:
            return []
        marks = ", ".join(["%s"] * len(ids))
        sql = (
            f"UPDATE {t.task} SET {assignments} WHERE id IN ({marks}) AND state = {new} "
            "RETURNING id, attempt"
        )
        params = [*values, *ids]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [(row[0], row[1]) for row in cursor.fetchall()]


def unqueue(ids: list[int], *, using: str) -> int:
    """``queued → new`` for tasks whose messages could not be published."""
    return (
        BatchTask.objects.using(using)
        .filter(pk__in=ids, state=TaskState.QUEUED)
        .update(state=TaskState.NEW, queued_at=None, queue="")
    )


# --- user side ---------------------------------------------------------------------
def cancel(task_id: int, *, using: str) -> bool:
    """Cancel a waiting task now, or flag a running one; True if either applied."""
    now = timezone.now()
    tasks = BatchTask.objects.using(using).filter(pk=task_id)
    waiting = tasks.filter(state__in=(TaskState.NEW, TaskState.QUEUED))
    queue = waiting.values_list("queue", flat=True).first()
    if waiting.update(state=TaskState.CANCELLED, finished_at=now, lease_expires_at=None):
        if queue:
            from .dispatch import dispatch_on_commit

            dispatch_on_commit(queue, using=using)
        return True
    running = tasks.filter(state=TaskState.RUNNING, cancel_requested=False)
    return bool(running.update(cancel_requested=True))


def set_priority(task_id: int, priority: int, *, using: str) -> bool:
    """Change the priority of a task still waiting for dispatch; True if it applied."""
    waiting = BatchTask.objects.using(using).filter(pk=task_id, state=TaskState.NEW)
    return bool(waiting.update(priority=priority))
