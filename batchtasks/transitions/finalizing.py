"""The writes about a final task's finalizers: mark them due, claim a run, record it.

A task becomes ``finalize_state = 'pending'`` in the very statement that makes it
final, so a crash between the two cannot lose its finalizers. A run is claimed by
moving ``finalize_after`` a lease ahead (two workers never run it at once; a crashed
run is claimed again once the lease is over) and counted; only the claim's own count
may then record the run, so a late run whose lease ran out records nothing.
"""

from __future__ import annotations

from django.db import connections

from ..core.finalizers import finalized_types
from ..core.names import is_name
from ..core.states import FINAL_STATES, FinalizeState
from ..db.sql import Clock, Tables, states_sql

PENDING, DONE, FAILED = FinalizeState.PENDING, FinalizeState.DONE, FinalizeState.FAILED


def finalize_marks(final: str, t: Tables, clock: Clock) -> str:
    """``SET`` items (with a leading comma) that mark a task due for its finalizers where
    the SQL condition ``final`` holds and its type has finalizers: a write that makes a
    task final adds them. Empty (the statement is unchanged) when no type has any.

    The types come from this process's registry, as literals in the same statement:
    every writer (runner, sweeper, heartbeat, signal handlers, cancels, skips) gets it
    right without knowing the task's type, and without another query.
    """
    names = finalized_types()
    if not names:
        return ""
    assert all(is_name(name) for name in names)  # no quote can hide in them
    literals = ", ".join(f"'{name}'" for name in names)
    due = (
        f"({final}) AND definition_id IN "
        f"(SELECT d.id FROM {t.definition} d WHERE d.name IN ({literals}))"
    )
    return (
        f", finalize_state = CASE WHEN {due} THEN '{PENDING}' ELSE finalize_state END, "
        f"finalize_after = CASE WHEN {due} THEN {clock.now} ELSE finalize_after END"
    )


def due_finalizations(*, limit: int, using: str) -> list[int]:
    """Ids of final tasks whose finalizers are due, the longest due first."""
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {t.task} WHERE finalize_state = '{PENDING}' "
            f"AND finalize_after <= {clock.now} ORDER BY finalize_after LIMIT %s",
            [limit],
        )
        return [row[0] for row in cursor.fetchall()]


def claim_finalization(task_id: int, lease_seconds: float, *, using: str) -> int | None:
    """Take the due finalizers of a final task for ``lease_seconds``; return this run's
    number (``None``: not due, or another process runs them now)."""
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {t.task} SET finalize_after = {clock.after}, "
            "finalize_attempts = finalize_attempts + 1 "
            f"WHERE id = %s AND finalize_state = '{PENDING}' AND finalize_after <= {clock.now} "
            f"AND state IN ({states_sql(*FINAL_STATES)}) RETURNING finalize_attempts",
            [clock.param(lease_seconds), task_id],
        )
        row = cursor.fetchone()
    return None if row is None else int(row[0])


def record_finalized(task_id: int, run: int, *, using: str) -> bool:
    """Record run ``run`` of a task's finalizers as done; True if it was still its run."""
    connection = connections[using]
    t = Tables(connection)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {t.task} SET finalize_state = '{DONE}', finalize_after = NULL, "
            "finalize_error = '' "
            f"WHERE id = %s AND finalize_state = '{PENDING}' AND finalize_attempts = %s",
            [task_id, run],
        )
        return cursor.rowcount == 1


def record_finalize_error(
    task_id: int, run: int, error: str, retry_in: float | None, *, using: str
) -> bool:
    """Record that run ``run`` failed with ``error``: due again in ``retry_in`` seconds,
    or ``failed`` for good (``None``); True if it was still its run."""
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    if retry_in is None:
        assignments, values = f"finalize_state = '{FAILED}', finalize_after = NULL", []
    else:
        assignments, values = f"finalize_after = {clock.after}", [clock.param(retry_in)]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {t.task} SET {assignments}, finalize_error = %s "
            f"WHERE id = %s AND finalize_state = '{PENDING}' AND finalize_attempts = %s",
            [*values, error, task_id, run],
        )
        return cursor.rowcount == 1
