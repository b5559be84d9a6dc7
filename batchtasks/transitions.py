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

from django.db import connections, models, transaction
from django.utils import timezone

from .models import BatchTask
from .sql import Tables, db_datetime, states_sql
from .states import FINAL_STATES, TaskState, sources_of

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
    #: For a failure: run again as the next attempt at this time.
    retry_at: datetime | None = None


# --- worker side -------------------------------------------------------------------
def claim(task_id: int, *, worker: str, lease_seconds: float, using: str) -> Claim | None:
    """``queued → running`` for this worker; ``None`` if the task is not queued any more."""
    connection = connections[using]
    t = Tables(connection)
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
        db_datetime(connection, now),
        worker,
        db_datetime(connection, now + timedelta(seconds=lease_seconds)),
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
    t = Tables(connection)
    sql = (
        f"UPDATE {t.task} SET progress_percent = %s, progress_message = %s "
        f"WHERE id = %s AND state = '{TaskState.RUNNING}' AND attempt = %s "
        "RETURNING cancel_requested"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [percent, message, task_id, attempt])
        row = cursor.fetchone()
    return None if row is None else bool(row[0])


def finish(task_id: int, attempt: int, outcome: Outcome, *, using: str) -> bool:
    """End this running attempt with its attempt row; True if it applied.

    ``running → outcome.state``, or for a failure with ``retry_at`` ``running → new``
    with the next attempt number, due at ``retry_at``.
    """
    if outcome.state not in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED):
        raise ValueError(f"finish() cannot end a task as {outcome.state!r}.")
    connection = connections[using]
    now = db_datetime(connection, timezone.now())
    percent, message = outcome.progress if outcome.progress else (None, None)
    error = [outcome.error_type[:200], outcome.error_message, outcome.error_traceback]
    common = (
        "error_type = %s, error_message = %s, error_traceback = %s, lease_expires_at = NULL, "
        "progress_percent = COALESCE(%s, progress_percent), "
        "progress_message = COALESCE(%s, progress_message)"
    )
    if outcome.retry_at is not None and outcome.state == TaskState.FAILED:
        assignments = (
            f"state = '{TaskState.NEW}', attempt = attempt + 1, run_after = %s, queue = '', "
            f"queued_at = NULL, {common}"
        )
        values = [db_datetime(connection, outcome.retry_at), *error, percent, message]
        number = "attempt - 1"  # the update has already counted the next attempt
    else:
        result = BatchTask._meta.get_field("result").get_db_prep_save(outcome.result, connection)
        assignments = f"state = '{outcome.state}', finished_at = %s, result = %s, {common}"
        values = [now, result, *error, percent, message]
        number = "attempt"
    return _end_attempt(
        task_id,
        attempt,
        assignments=assignments,
        values=values,
        now=now,
        number=number,
        using=using,
    )


def _end_attempt(
    task_id: int,
    attempt: int,
    *,
    assignments: str,
    values: list[Any],
    now: Any,
    number: str,
    using: str,
) -> bool:
    """Apply ``assignments`` to the running attempt and write its attempt row."""
    connection = connections[using]
    t = Tables(connection)
    # The attempt's outcome is the task's new state, except that a retry failed.
    outcome = f"CASE WHEN state = '{TaskState.NEW}' THEN '{TaskState.FAILED}' ELSE state END"
    update = (
        f"UPDATE {t.task} SET {assignments} "
        f"WHERE id = %s AND state = '{TaskState.RUNNING}' AND attempt = %s "
        f"RETURNING id, {number}, worker, started_at, %s, {outcome}, error_type, error_message"
    )
    params = [*values, task_id, attempt, now]
    columns = "task_id, number, worker, started_at, finished_at, outcome, error_type, error_message"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # One round trip: the attempt row is written from what the update returned.
            cursor.execute(
                f"WITH done AS ({update}) INSERT INTO {t.attempt} ({columns}) SELECT * FROM done",
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


# --- dispatcher side ---------------------------------------------------------------
def admit(
    ids: list[int] | None,
    *,
    queue: str,
    using: str,
    definition_id: int | None = None,
    limit: int = 0,
    skip_locked: bool = False,
) -> list[tuple[int, int, int]]:
    """``new → queued`` into ``queue``: the given ids, or the next ``limit`` due tasks of a type
    in (priority, fair turn, age) order. Returns ``(id, attempt, definition id)`` of each."""
    connection = connections[using]
    t = Tables(connection)
    now = timezone.now()
    assignments = f"state = '{TaskState.QUEUED}', queued_at = %s, queue = %s"
    values: list[Any] = [db_datetime(connection, now), queue]
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
            "RETURNING id, attempt, definition_id"
        )
        params = [definition_id, db_datetime(connection, now), limit, *values]
    else:
        if not ids:
            return []
        marks = ", ".join(["%s"] * len(ids))
        sql = (
            f"UPDATE {t.task} SET {assignments} WHERE id IN ({marks}) AND state = {new} "
            "RETURNING id, attempt, definition_id"
        )
        params = [*values, *ids]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [(row[0], row[1], row[2]) for row in cursor.fetchall()]


def requeued_now(ids: list[int], *, using: str) -> set[int]:
    """Restart the queued clock of tasks still ``queued``; return their ids."""
    if not ids:
        return set()
    connection = connections[using]
    t = Tables(connection)
    marks = ", ".join(["%s"] * len(ids))
    sql = (
        f"UPDATE {t.task} SET queued_at = %s WHERE id IN ({marks}) "
        f"AND state = '{TaskState.QUEUED}' RETURNING id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [db_datetime(connection, timezone.now()), *ids])
        return {row[0] for row in cursor.fetchall()}


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


# --- leases and lost attempts ------------------------------------------------------------
def renew_leases(
    worker: str, held: list[tuple[int, int]], seconds: float, *, using: str
) -> list[tuple[int, int, bool]]:
    """Extend the leases of attempts ``worker`` holds; return ``(id, attempt, cancel
    requested)`` for each that is still its own."""
    if not held:
        return []
    connection = connections[using]
    t = Tables(connection)
    until = db_datetime(connection, timezone.now() + timedelta(seconds=seconds))
    pairs = ", ".join(["(%s, %s)"] * len(held))
    sql = (
        f"UPDATE {t.task} SET lease_expires_at = %s WHERE state = '{TaskState.RUNNING}' "
        f"AND worker = %s AND (id, attempt) IN ({pairs}) "
        "RETURNING id, attempt, cancel_requested"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [until, worker, *(value for pair in held for value in pair)])
        return [(row[0], row[1], bool(row[2])) for row in cursor.fetchall()]


def lose_attempt(
    task_id: int,
    attempt: int,
    error_type: str,
    message: str,
    *,
    retry_at: datetime | None,
    using: str,
) -> bool:
    """End an attempt whose process is gone: run it again at ``retry_at``, or fail it."""
    outcome = Outcome(
        TaskState.FAILED, error_type=error_type, error_message=message, retry_at=retry_at
    )
    return finish(task_id, attempt, outcome, using=using)


# --- more user side -----------------------------------------------------------------------
def retry(task_id: int, *, using: str) -> bool:
    """Run a failed or cancelled task again as its next attempt; True if it applied."""
    finished = [s for s in sources_of(TaskState.NEW) if s in FINAL_STATES]
    tasks = BatchTask.objects.using(using).filter(pk=task_id, state__in=finished)
    applied = tasks.update(
        state=TaskState.NEW,
        attempt=models.F("attempt") + 1,
        run_after=None,
        queue="",
        queued_at=None,
        started_at=None,
        finished_at=None,
        worker="",
        lease_expires_at=None,
        cancel_requested=False,
        result=None,
        error_type="",
        error_message="",
        error_traceback="",
        progress_percent=0,
        progress_message="",
    )
    return bool(applied)


def skip_waiting(definition_id: int, unique_key: str, *, using: str) -> list[str]:
    """Mark the waiting tasks of a type with ``unique_key`` skipped (superseded); return
    the queues of those that held a slot."""
    waiting = BatchTask.objects.using(using).filter(
        definition_id=definition_id,
        unique_key=unique_key,
        state__in=(TaskState.NEW, TaskState.QUEUED),
    )
    queues = [q for q in waiting.values_list("queue", flat=True) if q]
    waiting.update(state=TaskState.SKIPPED, finished_at=timezone.now())
    return queues


def delete_tasks(ids: list[int], *, using: str) -> int:
    """Delete finished tasks with their parameters and attempts (retention)."""
    if not ids:
        return 0
    connection = connections[using]
    t = Tables(connection)
    marks = ", ".join(["%s"] * len(ids))
    final = states_sql(*FINAL_STATES)
    with transaction.atomic(using=using), connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {t.task} WHERE id IN ({marks}) AND state IN ({final}) FOR UPDATE"
            if connection.features.has_select_for_update
            else f"SELECT id FROM {t.task} WHERE id IN ({marks}) AND state IN ({final})",
            ids,
        )
        done = [row[0] for row in cursor.fetchall()]
        if not done:
            return 0
        marks = ", ".join(["%s"] * len(done))
        cursor.execute(f"DELETE FROM {t.params} WHERE task_id IN ({marks})", done)
        cursor.execute(f"DELETE FROM {t.attempt} WHERE task_id IN ({marks})", done)
        cursor.execute(f"DELETE FROM {t.task} WHERE id IN ({marks})", done)
        return cursor.rowcount
