"""What users and their code ask of a task: cancel, retry, reprioritise, supersede,
delete. Each write returns what it did; dispatching the freed slots is the caller's."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import IntegrityError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.translation import gettext as _

from ..core.exceptions import UniqueKeyConflict
from ..core.states import WRITES, FinalizeState, TaskState
from ..db.sql import Clock, Tables, notice_channel_sql, states_sql
from .dependents import Settled, cancel_descendants, settle
from .finalizing import finalize_marks, keep_pending_outcome


@dataclass(frozen=True)
class Cancelled:
    """What a cancel did: ended a waiting task (freeing a slot in ``freed_queue`` if it
    held one), or flagged a running one."""

    ended: bool = False
    flagged: bool = False
    freed_queue: str = ""
    #: What it did to the task's children and, with ``cascade``, its blocked descendants.
    settled: Settled | None = None

    @property
    def applied(self) -> bool:
        return self.ended or self.flagged


def cancel(task_id: int, *, using: str, cascade: bool = False) -> Cancelled:
    """Cancel a waiting (or blocked) task now (marking it due for its type's finalizers,
    see ``finalize_marks``), or flag a running one for its worker to stop. With
    ``cascade`` its blocked descendants are cancelled too (``cancel_descendants``)."""
    with transaction.atomic(using=using):
        done = _cancel(task_id, using)
        settled = Settled()
        if cascade and done.applied:
            settled.add(cancel_descendants(task_id, using=using))
            finished = [(pk, TaskState.CANCELLED) for pk, _ in settled.ended]
            settled.add(settle(finished, using=using))
        if done.ended:
            settled.add(settle([(task_id, TaskState.CANCELLED)], using=using))
    if settled.due or settled.ended:
        return Cancelled(done.ended, done.flagged, done.freed_queue, settled)
    return done


def _cancel(task_id: int, using: str) -> Cancelled:
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    marks = finalize_marks("TRUE", t, clock)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {t.task} SET state = '{TaskState.CANCELLED}', finished_at = {clock.now}, "
            f"updated_at = {clock.now}, pending_parents = 0, "
            f"lease_expires_at = NULL{marks} WHERE id = %s "
            f"AND state IN ({states_sql(*WRITES['cancel_waiting'].sources)}) RETURNING queue",
            [task_id],
        )
        row = cursor.fetchone()
        if row is not None:
            return Cancelled(ended=True, freed_queue=row[0] or "")
        flag = (
            f"UPDATE {t.task} SET cancel_requested = TRUE, updated_at = {clock.now} WHERE id = %s "
            f"AND state IN ({states_sql(*WRITES['request_cancel'].sources)}) "
            "AND NOT cancel_requested"
        )
        if connection.vendor != "postgresql":
            cursor.execute(flag, [task_id])
            return Cancelled(flagged=cursor.rowcount == 1)
        # Its worker hears of it at once (``worker.notices``), at commit.
        cursor.execute(
            f"WITH flagged AS ({flag} RETURNING worker_instance) "
            f"SELECT pg_notify({notice_channel_sql('worker_instance')}, 'cancel') FROM flagged",
            [task_id],
        )
        return Cancelled(flagged=len(cursor.fetchall()) == 1)


def retry(task_id: int, *, using: str) -> bool:
    """Run a failed or cancelled task again as its next attempt, with a fresh allowance
    of lost runs (its outcome's pending finalizers still run for that outcome: see
    ``keep_pending_outcome``); True if it applied. ``UniqueKeyConflict`` if an unfinished task now
    holds its unique key."""
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    sql = (
        f"UPDATE {t.task} SET state = '{TaskState.NEW}', attempt = attempt + 1, lost_runs = 0, "
        f"updated_at = {clock.now}, "
        # Due from now, from the priority it was given: a wait by priority aging
        # (``age_priorities``) counts from here, not from its first submit.
        f"run_after = {clock.now}, priority = COALESCE(base_priority, priority), "
        "base_priority = NULL, queue = '', queued_at = NULL, started_at = NULL, "
        "finished_at = NULL, worker = '', worker_instance = '', worker_pid = NULL, "
        "lease_expires_at = NULL, cancel_requested = FALSE, result = NULL, error_type = '', "
        "error_message = '', error_traceback = '', progress_percent = 0, progress_message = '', "
        # Its next final outcome is finalized afresh; the one replaced here, if its
        # finalizers are pending, is kept for them first (a run under way records there).
        "finalize_state = '', finalize_attempts = 0, finalize_after = NULL, finalize_error = '' "
        f"WHERE id = %s AND state IN ({states_sql(*WRITES['retry'].sources)})"
    )
    try:
        # A savepoint: a conflict must not break the caller's transaction.
        with transaction.atomic(using=using), connection.cursor() as cursor:
            keep_pending_outcome(task_id, using=using)
            cursor.execute(sql, [task_id])
            return cursor.rowcount == 1
    except IntegrityError as exc:
        raise UniqueKeyConflict(
            _(
                "Task %(id)s cannot run again: another unfinished task of its type holds its "
                "unique_key. Cancel that one first, or wait until it has finished."
            )
            % {"id": task_id}
        ) from exc


def set_priority(task_id: int, priority: int, *, using: str) -> bool:
    """Change the priority of a task still waiting for dispatch; True if it applied."""
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    with connection.cursor() as cursor:
        cursor.execute(
            # The user's choice is the task's priority now: aging goes on from it.
            f"UPDATE {t.task} SET priority = %s, base_priority = NULL, "
            f"updated_at = {clock.now} WHERE id = %s "
            f"AND state IN ({states_sql(*WRITES['set_priority'].sources)})",
            [priority, task_id],
        )
        return cursor.rowcount == 1


def skip_waiting(
    definition_id: int, unique_key: str, *, using: str
) -> tuple[list[tuple[int, str]], Settled]:
    """Mark the waiting (or blocked) tasks of a type with ``unique_key`` skipped
    (superseded), and due for the type's finalizers (see ``finalize_marks``); return their
    ids and queues (a queue is ``""`` unless the task held a slot in it), and what that
    did to their children."""
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    marks = finalize_marks("TRUE", t, clock)
    with transaction.atomic(using=using), connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {t.task} SET state = '{TaskState.SKIPPED}', finished_at = {clock.now}, "
            f"updated_at = {clock.now}, pending_parents = 0{marks} "
            "WHERE definition_id = %s AND unique_key = %s "
            f"AND state IN ({states_sql(*WRITES['skip'].sources)}) "
            "RETURNING id, queue, child_count",
            [definition_id, unique_key],
        )
        rows = cursor.fetchall()
        parents = [(row[0], TaskState.SKIPPED) for row in rows if row[2]]
        settled = settle(parents, using=using) if parents else Settled()
    return [(row[0], row[1] or "") for row in rows], settled


def delete_tasks(ids: list[int], *, using: str) -> int:
    """Delete finished tasks with their parameters, attempts and earlier outcomes
    (retention); not those whose finalizers (of any outcome) are still to run."""
    if not ids:
        return 0
    connection = connections[using]
    t = Tables(connection)
    marks = ", ".join(["%s"] * len(ids))
    final = states_sql(*WRITES["delete"].sources)
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    with transaction.atomic(using=using), connection.cursor() as cursor:
        # Which have earlier outcomes or dependency links too, read with them: the
        # statements that delete those are then only sent for tasks that have them.
        linked = f"EXISTS (SELECT 1 FROM {t.dependency} l WHERE l.child_id = {t.task}.id)"
        cursor.execute(
            f"SELECT id, EXISTS (SELECT 1 FROM {t.outcome} o WHERE o.task_id = {t.task}.id), "
            f"child_count > 0 OR {linked} "
            f"FROM {t.task} WHERE id IN ({marks}) AND state IN ({final}) "
            f"AND finalize_state <> '{FinalizeState.PENDING}' AND {_no_earlier_due(t)}{lock}",
            ids,
        )
        rows = cursor.fetchall()
        if not rows:
            return 0
        done, retried = [row[0] for row in rows], [row[0] for row in rows if row[1]]
        marks = ", ".join(["%s"] * len(done))
        cursor.execute(f"DELETE FROM {t.params} WHERE task_id IN ({marks})", done)
        cursor.execute(f"DELETE FROM {t.attempt} WHERE task_id IN ({marks})", done)
        links = [row[0] for row in rows if row[2]]
        if links:
            both = ", ".join(["%s"] * len(links))
            cursor.execute(
                f"DELETE FROM {t.dependency} WHERE parent_id IN ({both}) OR child_id IN ({both})",
                links + links,
            )
        if retried:
            kept = ", ".join(["%s"] * len(retried))
            cursor.execute(f"DELETE FROM {t.outcome} WHERE task_id IN ({kept})", retried)
        cursor.execute(f"DELETE FROM {t.task} WHERE id IN ({marks})", done)
        return cursor.rowcount


def delete_expired(definition_id: int, retention: float, limit: int, *, using: str) -> int:
    """Delete at most ``limit`` tasks of a type finished more than ``retention`` seconds
    ago, oldest first, with their parameters, attempts and earlier outcomes; not those
    whose finalizers (of any outcome) are still to run, nor those another transaction
    holds. Return how many."""
    connection = connections[using]
    if connection.vendor != "postgresql":  # SQLite: the ids, then their guarded delete
        return delete_tasks(_expired_ids(definition_id, retention, limit, using), using=using)
    t = Tables(connection)
    # One statement, not a SELECT and then a DELETE a table by IN lists of ids: 1,000
    # rows cost 60-100 ms that way (four 1,000-value lists to plan, five round trips) and
    # about 30 ms this way, a third of it the check of the attempts' foreign key at commit
    # (since dropped). Rows another transaction holds (a retry) are skipped, not waited for; the
    # pick is read as an array because PostgreSQL may rescan ``IN (… LIMIT n FOR UPDATE)``.
    doomed = "= ANY(ARRAY(SELECT id FROM doomed))"
    sql = (
        f"WITH doomed AS MATERIALIZED ({_expired_sql(connection)} FOR UPDATE SKIP LOCKED), "
        f"params AS (DELETE FROM {t.params} WHERE task_id {doomed}), "
        f"attempts AS (DELETE FROM {t.attempt} WHERE task_id {doomed}), "
        f"outcomes AS (DELETE FROM {t.outcome} WHERE task_id {doomed}), "
        f"links AS (DELETE FROM {t.dependency} WHERE parent_id {doomed} "
        f"OR child_id {doomed}) "
        f"DELETE FROM {t.task} WHERE id {doomed}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [definition_id, Clock(connection).param(-retention), limit])
        return cursor.rowcount


def _expired_sql(connection: BaseDatabaseWrapper) -> str:
    """Ids of a type's tasks finished more than ``%s`` seconds ago (negated), at most
    ``%s``, oldest first: a range scan of ``batchtask_finished_idx``."""
    t, clock = Tables(connection), Clock(connection)
    return (
        f"SELECT id FROM {t.task} WHERE definition_id = %s "
        f"AND state IN ({states_sql(*WRITES['delete'].sources)}) "
        f"AND finalize_state <> '{FinalizeState.PENDING}' AND {_no_earlier_due(t)} "
        f"AND finished_at < {clock.after} ORDER BY finished_at LIMIT %s"
    )


def _no_earlier_due(t: Tables) -> str:
    """True for a task none of whose earlier outcomes still has finalizers to run."""
    return (
        f"NOT EXISTS (SELECT 1 FROM {t.outcome} o WHERE o.task_id = {t.task}.id "
        f"AND o.finalize_state = '{FinalizeState.PENDING}')"
    )


def _expired_ids(definition_id: int, retention: float, limit: int, using: str) -> list[int]:
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(
            _expired_sql(connection),
            [definition_id, Clock(connection).param(-retention), limit],
        )
        return [row[0] for row in cursor.fetchall()]
