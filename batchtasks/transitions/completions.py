"""Writes a worker makes for several attempts at once: successful ends in one statement,
and the measured run time of a type.

The batched end is fenced exactly as ``end_attempt``: by task, attempt and worker
instance, and only from ``running``. It writes what ``end_attempt`` writes for a
``succeeded`` outcome, with each attempt's row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from django.db import connections, transaction

from ..core.states import WRITES, AttemptOutcome
from ..db.cursors import kept_cursor
from ..db.sql import Clock, Tables, states_sql
from .attempts import ATTEMPT_COLUMNS, Ended, Fence, Outcome, end_attempts_with_children
from .dependents import settle
from .finalizing import finalize_marks


@dataclass(frozen=True)
class Succeeded:
    """A successful attempt waiting to be written with others."""

    fence: Fence
    result: Any
    #: The last progress message not written yet (``None``: keep what is stored).
    message: str | None
    #: Seconds from the claim to the plugin's start: a task that waited in its message
    #: behind others has its ``started_at`` moved to when it really started.
    waited: float = 0.0


def end_succeeded(runs: list[Succeeded], *, using: str) -> dict[int, Ended]:
    """End these running attempts as succeeded, with their attempt rows, in one statement
    on PostgreSQL. Returns the ended ones by task id; one that is not running under its
    fence any more is left out (nothing is written for it).

    Tasks with children are left to a second statement, in a transaction with their
    children's countdown (``settle``): the first costs tasks without children nothing."""
    if not runs:
        return {}
    connection = connections[using]
    if connection.vendor != "postgresql":
        return end_attempts_with_children([(run.fence, _outcome(run)) for run in runs], using=using)
    columns = _columns(runs)
    cursor = kept_cursor(connection)
    cursor.execute(_end_sql(connection, "AND child_count = 0 ", len(runs) > 1), columns)
    ended = {row[0]: Ended(row[1], row[2], row[3]) for row in cursor.fetchall()}
    if len(ended) == len(runs):
        return ended
    # Not ours any more, or children wait for them.
    rest = _columns([run for run in runs if run.fence.task_id not in ended])
    with transaction.atomic(using=using), connection.cursor() as cursor:
        cursor.execute(_end_sql(connection, "", len(rest[0]) > 1), rest)
        more = {row[0]: Ended(row[1], row[2], row[3]) for row in cursor.fetchall()}
        parents = [(pk, e.state) for pk, e in more.items() if e.children]
        if parents:  # succeeded: final; their settled facts ride on the first of them
            first = parents[0][0]
            more[first] = replace(more[first], settled=settle(parents, using=using))
    return ended | more


def _columns(runs: list[Succeeded]) -> list[list[Any]]:
    """The statement's arrays, by task id (the order the statement locks them in)."""
    columns: list[list[Any]] = [[], [], [], [], [], []]
    for run in sorted(runs, key=lambda run: run.fence.task_id):
        f = run.fence
        result = None if run.result is None else json.dumps(run.result)
        for column, value in zip(
            columns,
            (f.task_id, f.attempt, f.instance, result, run.message, run.waited),
            strict=True,
        ):
            column.append(value)
    return columns


#: Built once per backend, guard and locking: building it took a sixth of a held write's CPU.
_END_SQL: dict[tuple[str, str, bool], str] = {}


def _end_sql(connection: Any, guard: str, several: bool) -> str:
    key = (connection.vendor, guard, several)
    sql = _END_SQL.get(key)
    if sql is None:
        sql = _END_SQL[key] = _build_end_sql(connection, guard, several)
    return sql


def _build_end_sql(connection: Any, guard: str, several: bool) -> str:
    t, clock = Tables(connection), Clock(connection)
    succeeded = f"'{AttemptOutcome.SUCCEEDED}'"
    fenced = (
        f"{t.task}.id = v.id AND {t.task}.attempt = v.attempt AND worker_instance = v.instance "
        f"AND state IN ({states_sql(*WRITES['end_attempt'].sources)}) {guard}"
    )
    # Several rows are locked in id order before any is written, as a child's submit
    # locks its parents (``dependents.link``): the update's own join meets rows in the
    # order its plan gives (a hash join over the running rows: heap order), and two
    # writers that lock in different orders deadlock. One row needs no order.
    locked = (
        f"locked AS MATERIALIZED (SELECT {t.task}.id FROM {t.task} JOIN v ON {fenced}"
        f"ORDER BY {t.task}.id FOR NO KEY UPDATE OF {t.task}), "
        if several
        else ""
    )
    # Arrays, not a VALUES list: one statement text whatever the batch's size, so that it
    # is prepared once on the worker's state connection.
    return (
        "WITH v AS (SELECT * FROM UNNEST(%s::bigint[], %s::integer[], %s::text[], "
        "%s::jsonb[], %s::text[], %s::float8[]) "
        "AS v (id, attempt, instance, result, message, waited)), "
        f"{locked}done AS (UPDATE {t.task} SET state = {succeeded}, "
        "started_at = started_at + MAKE_INTERVAL(secs => v.waited), "
        f"finished_at = {clock.now}, updated_at = {clock.now}, result = v.result, "
        "error_type = '', error_message = '', error_traceback = '', "
        "lease_expires_at = NULL, worker_pid = NULL, progress_percent = 100, "
        f"progress_message = COALESCE(v.message, progress_message)"
        f"{finalize_marks('TRUE', t, clock)} "
        f"FROM v {'JOIN locked ON locked.id = v.id ' if locked else ''}WHERE {fenced}"
        f"RETURNING {t.task}.id AS id, {t.task}.attempt AS number, worker, started_at, "
        f"{clock.now} AS now, state, queue, child_count), "
        f"recorded AS (INSERT INTO {t.attempt} ({ATTEMPT_COLUMNS}) SELECT id, number, "
        f"worker, started_at, now, {succeeded}, '', '' FROM done) "
        "SELECT id, state, queue, child_count FROM done"
    )


def _outcome(run: Succeeded) -> Outcome:
    return Outcome(AttemptOutcome.SUCCEEDED, result=run.result, progress=(100, run.message))


def record_run_seconds(definition_id: int, seconds: float, *, using: str) -> None:
    """Fold a measured mean run time into the type's moving average (``run_seconds``),
    which sizes the messages of its backlog."""
    connection = connections[using]
    t = Tables(connection)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {t.definition} SET run_seconds = CASE WHEN run_seconds IS NULL "
            "THEN %s ELSE run_seconds * 0.5 + %s * 0.5 END WHERE id = %s",
            [seconds, seconds, definition_id],
        )
