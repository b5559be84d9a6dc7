"""The writes about a final task's finalizers: mark them due, claim a run, record it.

A task becomes ``finalize_state = 'pending'`` in the very statement that makes it
final, so a crash between the two cannot lose its finalizers. A run is claimed by
moving ``finalize_after`` a lease ahead (two workers never run it at once; a crashed
run is claimed again once the lease is over) and counted; only the claim's own count
may then record the run, so a late run whose lease ran out records nothing.

A run is for one outcome, named by the task's attempt (each final outcome has its own:
only a retry leaves a final state, and it counts the attempt up). A retry keeps an
outcome whose finalizers are pending as a ``BatchTaskOutcome`` row
(``keep_pending_outcome``); every record is fenced by task, attempt and run number and
lands on that outcome wherever it is now, never on the outcome that replaced it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from ..core.finalizers import finalized_types
from ..core.names import is_name
from ..core.states import FINAL_STATES, WRITES, FinalizeState
from ..db.sql import Clock, Tables, states_sql
from ..models import BatchTaskOutcome

PENDING, DONE, FAILED = FinalizeState.PENDING, FinalizeState.DONE, FinalizeState.FAILED
#: The columns a kept outcome copies from its task (same names in both tables).
KEPT = ", ".join(BatchTaskOutcome.OUTCOME_FIELDS)


@dataclass(frozen=True)
class FinalizeRun:
    """A claimed run of the finalizers of one outcome of a task: the task, the attempt
    that reached the outcome, and the run's number among that outcome's runs."""

    task_id: int
    attempt: int
    number: int


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


def due_finalizations(*, limit: int, using: str) -> list[tuple[int, int | None]]:
    """The outcomes whose finalizers are due, the longest due first: (task id, ``None``)
    for a task's current outcome, (task id, attempt) for one a retry replaced."""
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    due = f"finalize_state = '{PENDING}' AND finalize_after <= {clock.now}"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, NULL, finalize_after FROM {t.task} WHERE {due} UNION ALL "
            f"SELECT task_id, attempt, finalize_after FROM {t.outcome} WHERE {due} "
            "ORDER BY 3 LIMIT %s",
            [limit],
        )
        return [(row[0], row[1]) for row in cursor.fetchall()]


def claim_finalization(
    task_id: int, lease_seconds: float, *, attempt: int | None = None, using: str
) -> FinalizeRun | None:
    """Take the due finalizers of a final task's outcome for ``lease_seconds``: its
    current one, or the one of ``attempt`` a retry replaced (``None``: not due, or
    another process runs them now)."""
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    claim = f"SET finalize_after = {clock.after}, finalize_attempts = finalize_attempts + 1"
    due = f"finalize_state = '{PENDING}' AND finalize_after <= {clock.now}"
    with connection.cursor() as cursor:
        if attempt is None:
            cursor.execute(
                f"UPDATE {t.task} {claim} WHERE id = %s AND {due} "
                f"AND state IN ({states_sql(*FINAL_STATES)}) RETURNING attempt, finalize_attempts",
                [clock.param(lease_seconds), task_id],
            )
        else:
            cursor.execute(
                f"UPDATE {t.outcome} {claim} WHERE task_id = %s AND attempt = %s AND {due} "
                "RETURNING attempt, finalize_attempts",
                [clock.param(lease_seconds), task_id, attempt],
            )
        row = cursor.fetchone()
    return None if row is None else FinalizeRun(task_id, int(row[0]), int(row[1]))


def record_finalized(run: FinalizeRun, *, using: str) -> bool:
    """Record ``run`` as done; True if it was still its outcome's run."""
    assignments = f"finalize_state = '{DONE}', finalize_after = NULL, finalize_error = ''"
    return _record(connections[using], run, assignments, [])


def record_finalize_error(
    run: FinalizeRun, error: str, retry_in: float | None, *, using: str
) -> bool:
    """Record that ``run`` failed with ``error``: its outcome is due again in
    ``retry_in`` seconds, or ``failed`` for good (``None``); True if it was still its
    outcome's run."""
    connection = connections[using]
    if retry_in is None:
        assignments, values = f"finalize_state = '{FAILED}', finalize_after = NULL", []
    else:
        assignments = f"finalize_after = {Clock(connection).after}"
        values = [Clock(connection).param(retry_in)]
    return _record(connection, run, f"{assignments}, finalize_error = %s", [*values, error])


def _record(
    connection: BaseDatabaseWrapper, run: FinalizeRun, assignments: str, values: list[Any]
) -> bool:
    """Apply ``assignments`` to the run's outcome: on its task while the outcome is still
    the task's, else on the outcome a retry kept (it has moved there)."""
    t = Tables(connection)
    fence = f"finalize_state = '{PENDING}' AND attempt = %s AND finalize_attempts = %s"
    fenced = [run.attempt, run.number]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {t.task} SET {assignments} WHERE id = %s AND {fence}",
            [*values, run.task_id, *fenced],
        )
        if cursor.rowcount == 1:
            return True
        cursor.execute(
            f"UPDATE {t.outcome} SET {assignments} WHERE task_id = %s AND {fence}",
            [*values, run.task_id, *fenced],
        )
        return cursor.rowcount == 1


def keep_pending_outcome(task_id: int, *, using: str) -> None:
    """Keep a retryable task's outcome as a ``BatchTaskOutcome`` if its finalizers are
    pending (with their run, claimed or not), for them to run for it after the retry.
    Call it in the retry's transaction, before the retry's write."""
    connection = connections[using]
    t = Tables(connection)
    # FOR UPDATE: a run recording meanwhile waits, then finds its outcome kept here.
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {t.outcome} (task_id, {KEPT}) SELECT id, {KEPT} FROM {t.task} "
            f"WHERE id = %s AND state IN ({states_sql(*WRITES['retry'].sources)}) "
            f"AND finalize_state = '{PENDING}'{lock}",
            [task_id],
        )
