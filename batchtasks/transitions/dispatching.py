"""The dispatcher's and the sweeper's writes: admit, unqueue, mark republished."""

from __future__ import annotations

from typing import Any

from django.db import connections

from ..core.states import WRITES, TaskState
from ..db.sql import Clock, Tables, attempts_in, states_sql


def admit(
    ids: list[int] | None,
    *,
    queue: str,
    using: str,
    definition_id: int | None = None,
    limit: int = 0,
    skip_locked: bool = False,
) -> list[tuple[int, int, int, int, int]]:
    """``new → queued`` into ``queue``: the given ids, or the next ``limit`` due tasks of a type
    in (priority, fair turn, age) order. Returns ``(id, attempt, definition id, priority,
    fair round)`` of each, in no particular order."""
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    assignments = (
        f"state = '{TaskState.QUEUED}', queued_at = {clock.now}, updated_at = {clock.now}, "
        "queue = %s, "
        "republished_at = NULL, republish_count = 0"
    )
    new = states_sql(*WRITES["admit"].sources)
    if ids is None:
        # Materialised, then matched by primary key: PostgreSQL may rescan an
        # ``IN (… LIMIT n FOR UPDATE)`` subquery, and with stale statistics it may join
        # a materialised pick against the whole backlog.
        lock = " FOR UPDATE SKIP LOCKED" if skip_locked else ""
        by_id = (
            "= ANY(ARRAY(SELECT id FROM picked))"
            if connection.vendor == "postgresql"
            else "IN (SELECT id FROM picked)"
        )
        sql = (
            f"WITH picked AS MATERIALIZED (SELECT id FROM {t.task} WHERE definition_id = %s "
            f"AND state IN ({new}) AND (run_after IS NULL OR run_after <= {clock.now}) "
            f"ORDER BY priority DESC, fair_round, id LIMIT %s{lock}) "
            f"UPDATE {t.task} SET {assignments} WHERE id {by_id} AND state IN ({new}) "
            "RETURNING id, attempt, definition_id, priority, fair_round"
        )
        params: list[Any] = [definition_id, limit, queue]
    else:
        if not ids:
            return []
        marks = ", ".join(["%s"] * len(ids))
        sql = (
            f"UPDATE {t.task} SET {assignments} WHERE id IN ({marks}) AND state IN ({new}) "
            "RETURNING id, attempt, definition_id, priority, fair_round"
        )
        params = [queue, *ids]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [tuple(row) for row in cursor.fetchall()]


def still_queued(runs: list[tuple[int, int]], *, using: str) -> set[tuple[int, int]]:
    """Which of these ``(id, attempt)`` pairs are queued as that attempt now."""
    if not runs:
        return set()
    connection = connections[using]
    t = Tables(connection)
    match, values = attempts_in(runs)
    sql = (
        f"SELECT id, attempt FROM {t.task} WHERE {match} "
        f"AND state IN ({states_sql(*WRITES['republish'].sources)})"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        return {(row[0], row[1]) for row in cursor.fetchall()}


def unqueue(runs: list[tuple[int, int]], *, using: str) -> int:
    """``queued → new`` for attempts whose messages could not be published."""
    if not runs:
        return 0
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    match, values = attempts_in(runs)
    sql = (
        f"UPDATE {t.task} SET state = '{TaskState.NEW}', queued_at = NULL, queue = '', "
        f"updated_at = {clock.now} "
        f"WHERE {match} AND state IN ({states_sql(*WRITES['unqueue'].sources)})"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        return cursor.rowcount


def mark_republished(runs: list[tuple[int, int]], *, using: str) -> set[tuple[int, int]]:
    """Count one more publish of attempts still queued; return those it applied to."""
    if not runs:
        return set()
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    match, values = attempts_in(runs)
    sql = (
        f"UPDATE {t.task} SET republished_at = {clock.now}, "
        f"republish_count = republish_count + 1 WHERE {match} "
        f"AND state IN ({states_sql(*WRITES['republish'].sources)}) RETURNING id, attempt"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        return {(row[0], row[1]) for row in cursor.fetchall()}
