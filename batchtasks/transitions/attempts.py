"""The writes a worker makes about an attempt it runs: claim, progress, lease renewal, end.

Each is fenced by (task, attempt, worker instance): a message for another attempt
claims nothing, and a run that lost its lease (another instance now holds the task,
or it ended) can write nothing more. Times come from the database's clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from django.db import connections, transaction

from ..core.states import FINAL_STATES, WRITES, AttemptOutcome, TaskState
from ..db.cursors import kept_cursor
from ..db.sql import Clock, Tables, attempts_in, states_sql
from ..models import BatchTask
from .dependents import Settled, settle
from .finalizing import finalize_marks


@dataclass(frozen=True)
class Fence:
    """Who may write about an attempt: the worker instance that claimed it."""

    task_id: int
    attempt: int
    instance: str


@dataclass(frozen=True)
class Claim:
    """A task this worker now runs, with what it needs to run it."""

    task_id: int
    attempt: int
    definition_id: int
    queue: str
    lost_runs: int
    data: bytes
    codec: str


def claim(fence: Fence, *, worker: str, pid: int, lease_seconds: float, using: str) -> Claim | None:
    """``queued → running`` for this worker instance, only for the attempt the message
    names; ``None`` if the task is not queued as that attempt (a stale or duplicate
    message, a cancelled task)."""
    claims = claim_many([fence], worker=worker, pid=pid, lease_seconds=lease_seconds, using=using)
    return claims[0] if claims else None


def claim_many(
    fences: list[Fence], *, worker: str, pid: int, lease_seconds: float, using: str
) -> list[Claim]:
    """``claim`` for the attempts of one message (one worker instance), in one statement
    that also returns their parameters; in the order given, leaving out those not queued
    as their attempt."""
    if not fences:
        return []
    connection = connections[using]
    clock = Clock(connection)
    values: list[Any]
    if len(fences) == 1:
        match, values = "id = %s AND attempt = %s", [fences[0].task_id, fences[0].attempt]
    elif connection.vendor == "postgresql":
        # Arrays: one statement text whatever the message's size (prepared once).
        match = "(id, attempt) IN (SELECT * FROM UNNEST(%s::bigint[], %s::integer[]))"
        values = [[f.task_id for f in fences], [f.attempt for f in fences]]
    else:
        match, values = attempts_in([(f.task_id, f.attempt) for f in fences])
    instance = fences[0].instance
    assert all(f.instance == instance for f in fences)
    params = [worker, instance, pid, clock.param(lease_seconds), *values]
    sql = _CLAIM_SQL.get((connection.vendor, match)) or _claim_sql(connection, match)
    cursor = kept_cursor(connection)  # a cursor per claim cost as much as its execute
    cursor.execute(sql, params)
    rows = {(row[0], row[1]): row for row in cursor.fetchall()}
    claims = []
    for fence in fences:
        row = rows.pop((fence.task_id, fence.attempt), None)
        if row is not None:
            _, _, definition_id, queue, lost_runs, data, codec = row
            claims.append(
                Claim(
                    fence.task_id,
                    fence.attempt,
                    definition_id,
                    queue,
                    lost_runs,
                    bytes(data or b"{}"),
                    codec or "json",
                )
            )
    return claims


# Built once per backend and match: building it took a fifth of a millisecond of a
# pickup (the claim is on the path from submit to plugin start).
_CLAIM_SQL: dict[tuple[str, str], str] = {}


def _claim_sql(connection: Any, match: str) -> str:
    t, clock = Tables(connection), Clock(connection)
    sql = (
        f"UPDATE {t.task} SET state = '{TaskState.RUNNING}', started_at = {clock.now}, "
        f"updated_at = {clock.now}, "
        f"worker = %s, worker_instance = %s, worker_pid = %s, lease_expires_at = {clock.after}, "
        "progress_percent = 0, progress_message = '' "
        f"WHERE {match} AND state IN ({states_sql(*WRITES['claim'].sources)}) "
        "RETURNING id, attempt, definition_id, queue, lost_runs, "
        f"(SELECT data FROM {t.params} p WHERE p.task_id = {t.task}.id), "
        f"(SELECT codec FROM {t.params} p WHERE p.task_id = {t.task}.id)"
    )
    if len(_CLAIM_SQL) < 64:  # matches of other sizes (SQLite's lists) are not kept
        _CLAIM_SQL[(connection.vendor, match)] = sql
    return sql


def _fenced(write: str) -> str:
    return (
        "id = %s AND attempt = %s AND worker_instance = %s "
        f"AND state IN ({states_sql(*WRITES[write].sources)})"
    )


def record_progress(fence: Fence, percent: int, message: str, *, using: str) -> bool | None:
    """Write progress of a running attempt; return its cancel flag (``None``: the attempt
    is not this instance's any more, so it must stop)."""
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    sql = (
        f"UPDATE {t.task} SET progress_percent = %s, progress_message = %s, "
        f"updated_at = {clock.now} "
        f"WHERE {_fenced('progress')} RETURNING cancel_requested"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [percent, message, fence.task_id, fence.attempt, fence.instance])
        row = cursor.fetchone()
    return None if row is None else bool(row[0])


@dataclass(frozen=True)
class Renewed:
    """An attempt whose lease was just extended."""

    task_id: int
    attempt: int
    cancel_requested: bool
    pid: int | None


def renew_leases(
    instance: str, held: list[tuple[int, int]] | None, seconds: float, *, using: str
) -> list[Renewed]:
    """Extend the leases of the attempts ``instance`` holds (``None``: all it holds,
    for a beat that could not see which it holds)."""
    if held is not None and not held:
        return []
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    where = f"worker_instance = %s AND state IN ({states_sql(*WRITES['renew_lease'].sources)})"
    params: list[Any] = [instance]
    if held is not None:
        match, values = attempts_in(held)
        where += f" AND {match}"
        params += values
    returning = f" RETURNING {t.task}.id, attempt, cancel_requested, worker_pid"
    if connection.vendor == "postgresql":
        # Locked in id order, as the batched ends and a child's submit lock theirs: the
        # update's own plan meets rows in heap order, and renewals move them in the heap.
        sql = (
            f"WITH locked AS MATERIALIZED (SELECT id FROM {t.task} WHERE {where} ORDER BY id "
            f"FOR NO KEY UPDATE) UPDATE {t.task} SET lease_expires_at = {clock.after} "
            f"FROM locked WHERE {t.task}.id = locked.id"
        )
        params = [*params, clock.param(seconds)]
    else:  # SQLite: one writer at a time
        sql = f"UPDATE {t.task} SET lease_expires_at = {clock.after} WHERE {where}"
        params = [clock.param(seconds), *params]
    with connection.cursor() as cursor:
        cursor.execute(sql + returning, params)
        return [Renewed(row[0], row[1], bool(row[2]), row[3]) for row in cursor.fetchall()]


def release(fences: list[Fence], pid: int, *, using: str) -> list[tuple[int, str]]:
    """``running → new`` for claimed attempts that never started, because the process
    that claimed them (``pid``) was killed for another attempt of their message: the same
    attempt again, neither a failure nor a lost run, due at once in its old turn. Only
    those still running under their fence in that process, and not asked to cancel.
    Returns ``(task id, queue of its type)`` of each released."""
    if not fences:
        return []
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    match, values = attempts_in([(f.task_id, f.attempt) for f in fences])
    sql = (
        f"UPDATE {t.task} SET state = '{TaskState.NEW}', run_after = {clock.now}, "
        f"updated_at = {clock.now}, queue = '', queued_at = NULL, started_at = NULL, "
        "lease_expires_at = NULL, worker_pid = NULL "
        f"WHERE {match} AND worker_instance = %s AND worker_pid = %s "
        f"AND state IN ({states_sql(*WRITES['release'].sources)}) AND NOT cancel_requested "
        f"RETURNING id, (SELECT d.queue FROM {t.definition} d WHERE d.id = definition_id)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*values, fences[0].instance, pid])
        return [(row[0], row[1]) for row in cursor.fetchall()]


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended.

    ``kind`` is the attempt's own outcome. The task's next state follows from it and
    from the row, in one statement: a cancel requested meanwhile always wins over running
    again; a ``failed`` attempt with ``retry`` runs again while attempts remain (lost runs
    do not count), after ``retry_delay`` seconds; a ``lost`` run runs again at once while
    the type's ``max_lost_runs`` allows, else fails.
    """

    kind: str
    result: Any = None
    error_type: str = ""
    error_message: str = ""
    error_traceback: str = ""
    #: Progress to write with the outcome: (percent, message); ``None`` keeps what is stored.
    progress: tuple[int | None, str | None] | None = None
    retry: bool = False
    retry_delay: float = 0.0


@dataclass(frozen=True)
class Ended:
    """What ending an attempt did to its task."""

    state: str
    queue: str
    #: How many children wait or waited for the task (``depends_on``).
    children: int = 0
    #: What its final outcome did to its children (``None``: it has none, or runs again).
    settled: Settled | None = None

    @property
    def runs_again(self) -> bool:
        return self.state == TaskState.NEW


def _next_state(kind: str, retry: bool, t: Tables) -> str:
    """SQL for the task's next state."""
    if kind in (AttemptOutcome.SUCCEEDED, AttemptOutcome.CANCELLED):
        return f"'{kind}'"
    limit = f"(SELECT {{}} FROM {t.definition} d WHERE d.id = definition_id)"
    if kind == AttemptOutcome.LOST:
        again = f"WHEN lost_runs < {limit.format('max_lost_runs')} THEN '{TaskState.NEW}' "
    elif retry:
        again = f"WHEN attempt - lost_runs < {limit.format('max_attempts')} THEN '{TaskState.NEW}' "
    else:
        again = ""
    return (
        f"(CASE WHEN cancel_requested THEN '{TaskState.CANCELLED}' {again}"
        f"ELSE '{TaskState.FAILED}' END)"
    )


def end_attempt(
    fence: Fence, outcome: Outcome, *, using: str, lease_expired: bool = False
) -> Ended | None:
    """End a running attempt and write its attempt row, in one statement on PostgreSQL;
    ``None`` if the attempt is not running under ``fence`` (nothing is written).

    ``lease_expired`` adds the guard the sweeper needs: only if the lease ran out.
    A task that ends final is marked due for its finalizers in the same statement
    (see ``finalize_marks``), and its children are counted down (``settle``) in the
    same transaction.
    """
    update, params = _end_sql(fence, outcome, using, lease_expired)
    # Most tasks have no children: one statement, in no transaction of its own.
    ended = _write_with_attempt_row(update(" AND child_count = 0"), params, using)
    if ended is not None:
        return ended
    # Not ours any more, or children wait for it.
    ended_now = end_attempts_with_children(
        [(fence, outcome)], using=using, lease_expired=lease_expired
    )
    return ended_now.get(fence.task_id)


def end_attempts_with_children(
    ends: list[tuple[Fence, Outcome]], *, using: str, lease_expired: bool = False
) -> dict[int, Ended]:
    """``end_attempt`` for attempts whose tasks may have children, in one transaction
    that also counts the children down for those that end final (one ``settle`` for all:
    a child of several of them drops by all in one statement; a child's submit, which
    locks its parents' rows, waits for it or is waited for). Its ``Settled`` facts ride
    on the first of them that had children."""
    ended: dict[int, Ended] = {}
    with transaction.atomic(using=using):
        for fence, outcome in ends:
            update, params = _end_sql(fence, outcome, using, lease_expired)
            one = _write_with_attempt_row(update(""), params, using)
            if one is not None:
                ended[fence.task_id] = one
        parents = [(pk, e.state) for pk, e in ended.items() if e.children]
        final = [(pk, state) for pk, state in parents if state in FINAL_STATES]
        if final:
            ended[parents[0][0]] = replace(ended[parents[0][0]], settled=settle(final, using=using))
    return ended


def _end_sql(
    fence: Fence, outcome: Outcome, using: str, lease_expired: bool
) -> tuple[Callable[[str], str], list[Any]]:
    """The statement that ends an attempt (given an extra guard) and its values."""
    if outcome.kind not in AttemptOutcome.values:
        raise ValueError(f"end_attempt() got an unknown outcome {outcome.kind!r}.")
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    assignments, values = _end_assignments(outcome, t, clock, connection)
    final = f"NOT ({_next_state(outcome.kind, outcome.retry, t)} = '{TaskState.NEW}')"
    assignments += finalize_marks(final, t, clock)
    where = _fenced("end_attempt")
    if lease_expired:
        where += f" AND lease_expires_at < {clock.now}"
    # Returned after the update: a task that runs again has counted its next attempt.
    number = f"CASE WHEN state = '{TaskState.NEW}' THEN attempt - 1 ELSE attempt END"

    def update(guard: str) -> str:
        return (
            f"UPDATE {t.task} SET {assignments} WHERE {where}{guard} "
            f"RETURNING id AS id, {number} AS number, worker AS worker, "
            f"started_at AS started_at, {clock.now} AS now, '{outcome.kind}' AS outcome, "
            "error_type AS error_type, error_message AS error_message, state AS state, "
            "queue AS queue, child_count AS child_count"
        )

    return update, [*values, fence.task_id, fence.attempt, fence.instance]


def _end_assignments(
    outcome: Outcome, t: Tables, clock: Clock, connection: Any
) -> tuple[str, list[Any]]:
    """The ``SET`` list of ``end_attempt`` and its values: the next state and, when the
    task runs again, the next attempt's bookkeeping."""
    nxt = _next_state(outcome.kind, outcome.retry, t)
    again = f"{nxt} = '{TaskState.NEW}'"
    lost = 1 if outcome.kind == AttemptOutcome.LOST else 0
    assignments = (
        f"state = {nxt}, "
        f"attempt = CASE WHEN {again} THEN attempt + 1 ELSE attempt END, "
        f"lost_runs = CASE WHEN {again} THEN lost_runs + {lost} ELSE lost_runs END, "
        f"run_after = CASE WHEN {again} THEN {clock.after} ELSE run_after END, "
        f"queue = CASE WHEN {again} THEN '' ELSE queue END, "
        f"queued_at = CASE WHEN {again} THEN NULL ELSE queued_at END, "
        f"finished_at = CASE WHEN {again} THEN NULL ELSE {clock.now} END, "
        f"updated_at = {clock.now}, "
        "result = %s, error_type = %s, error_message = %s, error_traceback = %s, "
        "lease_expires_at = NULL, worker_pid = NULL, "
        "progress_percent = COALESCE(%s, progress_percent), "
        "progress_message = COALESCE(%s, progress_message)"
    )
    percent, message = outcome.progress if outcome.progress else (None, None)
    result = BatchTask._meta.get_field("result").get_db_prep_save(outcome.result, connection)
    values = [
        clock.param(outcome.retry_delay),
        result,
        outcome.error_type[:200],
        outcome.error_message,
        outcome.error_traceback,
        percent,
        message,
    ]
    return assignments, values


ATTEMPT_COLUMNS = (
    "task_id, number, worker, started_at, finished_at, outcome, error_type, error_message"
)


def _write_with_attempt_row(update: str, params: list[Any], using: str) -> Ended | None:
    connection = connections[using]
    t = Tables(connection)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # One round trip: the attempt row is written from what the update returned.
            cursor.execute(
                f"WITH done AS ({update}), recorded AS ("
                f"INSERT INTO {t.attempt} ({ATTEMPT_COLUMNS}) SELECT id, number, worker, "
                "started_at, now, outcome, error_type, error_message FROM done) "
                "SELECT state, queue, child_count FROM done",
                params,
            )
            row = cursor.fetchone()
            return None if row is None else Ended(row[0], row[1], row[2])
        with transaction.atomic(using=using):
            cursor.execute(update, params)
            row = cursor.fetchone()
            if row is None:
                return None
            marks = ", ".join(["%s"] * 8)
            cursor.execute(
                f"INSERT INTO {t.attempt} ({ATTEMPT_COLUMNS}) VALUES ({marks})", list(row[:8])
            )
    return Ended(row[8], row[9], row[10])
