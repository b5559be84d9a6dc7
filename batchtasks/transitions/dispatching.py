"""The dispatcher's and the sweeper's writes: admit, defer, unqueue, mark republished,
age priorities, and the rate-limit rows the admitting transaction moves on."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import connections

from ..core.states import WRITES, TaskState
from ..db.sql import Clock, Tables, attempts_in, states_sql
from ..models import BatchTaskRateLimit


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


def defer(deferrals: list[tuple[int, datetime]], *, using: str) -> int:
    """Move waiting tasks' ``run_after`` on to their earliest start ``(id, when)`` (a rate
    limit's deferral: never earlier than it was, not an attempt); how many it moved."""
    if not deferrals:
        return 0
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    new = states_sql(*WRITES["defer"].sources)
    field = BatchTaskRateLimit._meta.get_field("tat")
    whens = [field.get_db_prep_save(when, connection) for _, when in deferrals]
    ids = [pk for pk, _ in deferrals]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # One statement: 100 single-row updates took 25 ms, this one well under 1 ms.
            cursor.execute(
                f"UPDATE {t.task} t SET run_after = v.at, updated_at = {clock.now} "
                "FROM unnest(%s::bigint[], %s::timestamptz[]) AS v(id, at) "
                f"WHERE t.id = v.id AND t.state IN ({new}) "
                "AND (t.run_after IS NULL OR t.run_after < v.at)",
                [ids, whens],
            )
            return cursor.rowcount
        sql = (
            f"UPDATE {t.task} SET run_after = %s, updated_at = {clock.now} WHERE id = %s "
            f"AND state IN ({new}) AND (run_after IS NULL OR run_after < %s)"
        )
        cursor.executemany(sql, [[w, pk, w] for pk, w in zip(ids, whens, strict=True)])
        return max(cursor.rowcount, 0)


def age_priorities(seconds_per_point: float, cap: int, limit: int, *, using: str) -> int:
    """Raise the priority of due waiting tasks by a point per ``seconds_per_point`` each
    has waited since it fell due (``run_after``, else its submit), up to ``cap``, keeping
    the priority it had in ``base_priority`` and never lowering one: at most ``limit``
    tasks, those it would raise highest first (then the longest waiting). Returns how
    many it raised.

    The dispatcher's index and statements stay as they are: aged tasks are rows of a
    higher priority. A row is written only when its aged value goes up, so one task costs
    at most ``cap - base`` writes in its whole wait. Rows the dispatcher holds are
    skipped (PostgreSQL), so this never waits for a lock, nor deadlocks with a pass."""
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    since = "COALESCE(run_after, created_at)"
    waited = clock.seconds_since(since)
    base = "COALESCE(base_priority, priority)"
    if connection.vendor == "postgresql":
        aged = f"LEAST(%(cap)s, {base} + FLOOR({waited} / %(step)s))"
    else:  # waited >= 0 here, so truncating is flooring; SQLite's MIN(a, b) is LEAST
        aged = f"MIN(%(cap)s, {base} + CAST({waited} / %(step)s AS INTEGER))"
    new = states_sql(*WRITES["age"].sources)
    pick = (
        f"SELECT id FROM {t.task} WHERE state IN ({new}) AND priority < %(cap)s "
        # Due tasks that waited a point's worth at least (cheap before the arithmetic).
        f"AND {since} <= {clock.now} AND {waited} >= %(step)s AND {aged} > priority "
        f"ORDER BY {aged} DESC, {since}, id LIMIT %(limit)s"
    )
    assignments = f"base_priority = {base}, priority = {aged}, updated_at = {clock.now}"
    if connection.vendor == "postgresql":
        sql = (
            f"WITH picked AS MATERIALIZED ({pick} FOR UPDATE SKIP LOCKED) "
            f"UPDATE {t.task} SET {assignments} WHERE id = ANY(ARRAY(SELECT id FROM picked)) "
            f"AND state IN ({new}) AND {aged} > priority"
        )
    else:
        sql = f"UPDATE {t.task} SET {assignments} WHERE id IN ({pick})"
    params = {"cap": cap, "step": float(seconds_per_point), "limit": limit}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def lock_rate_keys(
    definition_id: int, keys: Iterable[str], now: datetime, *, using: str
) -> dict[str, datetime]:
    """Lock the rate rows of ``keys`` of a type (made if missing, as on time at ``now``),
    in key order so that passes cannot deadlock; return each key's ``tat``. SQLite has
    no row locks: the dispatcher holds its write lock."""
    ordered = sorted(set(keys))
    rows = BatchTaskRateLimit.objects.using(using)
    rows.bulk_create(
        [BatchTaskRateLimit(definition_id=definition_id, key=key, tat=now) for key in ordered],
        ignore_conflicts=True,
    )
    locked = (
        rows.select_for_update()
        .filter(definition_id=definition_id, key__in=ordered)
        .order_by("key")
        .values_list("key", "tat")
    )
    return dict(locked)


def record_rate_starts(definition_id: int, tats: dict[str, datetime], *, using: str) -> None:
    """Move the locked rate rows of a type on to ``tats`` (key to its new ``tat``)."""
    if not tats:
        return
    connection = connections[using]
    table = connection.ops.quote_name(BatchTaskRateLimit._meta.db_table)
    field = BatchTaskRateLimit._meta.get_field("tat")
    key = connection.ops.quote_name("key")
    sql = f"UPDATE {table} SET tat = %s WHERE definition_id = %s AND {key} = %s"
    rows = [
        [field.get_db_prep_save(tat, connection), definition_id, key]
        for key, tat in sorted(tats.items())
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


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
