"""Running attempts and their leases, and ending the ones whose process is gone.

A claimed attempt holds a lease that its worker's heartbeat renews. An attempt whose
process is gone (its pool process died or hit the hard time limit, its worker was
killed or lost its host) is found here and ended through ``transitions``: a lost run
runs again at once, without counting as an attempt, up to the type's
``max_lost_runs``; a hard timeout is a failure like any other. A cancel requested
before the loss always wins: the task ends cancelled and never starts again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.db import connections

from .. import transitions
from ..core.retries import retry_delay
from ..core.states import AttemptOutcome, Isolation, TaskState
from ..db.sql import Clock, Tables, attempts_in
from . import depends, events

logger = logging.getLogger(__name__)

LEASE_LOST = "batchtasks.LeaseExpired"
WORKER_LOST = "billiard.exceptions.WorkerLostError"
TIME_LIMIT = "billiard.exceptions.TimeLimitExceeded"
STOPPED = "batchtasks.Stopped"
#: The attempt's outcome when its cancel came while it waited behind other tasks.
CANCELLED_WAITING = "cancelled while waiting behind other tasks of its message"


@dataclass(frozen=True)
class HeldAttempt:
    """A running attempt, with what deciding its fate needs."""

    task_id: int
    attempt: int
    worker: str
    instance: str
    pid: int | None
    queue: str
    #: Whether it has run past its type's hard timeout (by the database's clock), for a
    #: type whose limits Celery enforces (isolated runs: one task a message). Those of
    #: inline types are enforced by the worker's agent, which ends what it stops itself;
    #: their ``started_at`` is their message's claim, earlier than their start.
    overran: bool
    timeout: int | None
    cancel_requested: bool
    lost_runs: int
    retry_backoff: int
    retry_backoff_max: int
    type_name: str = ""

    @property
    def fence(self) -> transitions.Fence:
        return transitions.Fence(self.task_id, self.attempt, self.instance)


def _held(where: str, params: list[Any], using: str, limit: int = 1000) -> list[HeldAttempt]:
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    overran = (
        f"(d.timeout IS NOT NULL AND d.isolation <> '{Isolation.INLINE}' "
        f"AND {clock.seconds_since('t.started_at')} >= d.timeout)"
    )
    sql = (
        "SELECT t.id, t.attempt, t.worker, t.worker_instance, t.worker_pid, t.queue, "
        f"{overran}, d.timeout, t.cancel_requested, t.lost_runs, d.retry_backoff, "
        f"d.retry_backoff_max, d.name "
        f"FROM {t.task} t JOIN {t.definition} d ON d.id = t.definition_id "
        f"WHERE t.state = '{TaskState.RUNNING}' AND {where} ORDER BY t.id LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, limit])
        rows = cursor.fetchall()
    return [
        HeldAttempt(
            task_id=row[0],
            attempt=row[1],
            worker=row[2],
            instance=row[3],
            pid=row[4],
            queue=row[5],
            overran=bool(row[6]),
            timeout=row[7],
            cancel_requested=bool(row[8]),
            lost_runs=row[9],
            retry_backoff=row[10],
            retry_backoff_max=row[11],
            type_name=row[12],
        )
        for row in rows
    ]


def held_attempt(fence: transitions.Fence, *, using: str) -> HeldAttempt | None:
    """The attempt if it is still running under ``fence``."""
    found = _held(
        "t.id = %s AND t.attempt = %s AND t.worker_instance = %s",
        [fence.task_id, fence.attempt, fence.instance],
        using,
        1,
    )
    return found[0] if found else None


def running_on(instance: str, *, using: str) -> list[HeldAttempt]:
    """The attempts the database says worker instance ``instance`` is running."""
    return _held("t.worker_instance = %s", [instance], using)


def expired_leases(*, using: str, limit: int = 1000) -> list[HeldAttempt]:
    """Running attempts whose lease ran out: their worker stopped renewing it."""
    now = Clock(connections[using]).now
    return _held(f"t.lease_expires_at < {now}", [], using, limit)


def still_ours(fence: transitions.Fence, *, using: str) -> bool | None:
    """The cancel flag of an attempt this instance runs; ``None`` if it is not running
    under ``fence`` any more (it ended, or its lease went to another)."""
    connection = connections[using]
    t = Tables(connection)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT cancel_requested FROM {t.task} WHERE id = %s AND attempt = %s "
            f"AND worker_instance = %s AND state = '{TaskState.RUNNING}'",
            [fence.task_id, fence.attempt, fence.instance],
        )
        row = cursor.fetchone()
    return None if row is None else bool(row[0])


def cancel_flags(fences: list[transitions.Fence], *, using: str) -> dict[int, bool]:
    """``still_ours`` for several attempts of one instance, in one query: the cancel flag
    of each still running under its fence, by task id (the others are left out)."""
    if not fences:
        return {}
    connection = connections[using]
    t = Tables(connection)
    match, values = attempts_in([(f.task_id, f.attempt) for f in fences])
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, cancel_requested FROM {t.task} WHERE {match} "
            f"AND worker_instance = %s AND state = '{TaskState.RUNNING}'",
            [*values, fences[0].instance],
        )
        return {row[0]: bool(row[1]) for row in cursor.fetchall()}


def ended_as_lost(runs: list[tuple[int, int]], *, using: str) -> set[tuple[int, int]]:
    """Those of the ``(task id, attempt)`` runs that were ended as lost runs (the lease
    expired, or the worker was taken for dead) rather than by their own run; one query."""
    if not runs:
        return set()
    connection = connections[using]
    t = Tables(connection)
    pairs = ", ".join(["(%s, %s)"] * len(runs))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT task_id, number FROM {t.attempt} WHERE (task_id, number) IN ({pairs}) "
            "AND outcome = %s",
            [*(value for run in runs for value in run), AttemptOutcome.LOST],
        )
        return {(row[0], row[1]) for row in cursor.fetchall()}


def time_limit_message(held: HeldAttempt) -> str:
    return f"hard time limit of {held.timeout} s exceeded; worker {held.worker} stopped it"


def worker_lost_message(held: HeldAttempt) -> str:
    return f"the pool process running it on {held.worker} ended before it finished"


def lose(
    held: HeldAttempt,
    error_type: str,
    message: str,
    *,
    using: str,
    lease_expired: bool = False,
) -> transitions.Ended | None:
    """End an attempt whose process is gone (see the module text)."""
    if held.cancel_requested:
        error_type, message = STOPPED, f"cancelled; its process ended ({message})"
    if error_type == TIME_LIMIT:
        failures = held.attempt - held.lost_runs
        outcome = transitions.Outcome(
            AttemptOutcome.FAILED,
            error_type=error_type,
            error_message=message,
            retry=True,
            retry_delay=retry_delay(failures, held.retry_backoff, held.retry_backoff_max),
        )
    else:
        outcome = transitions.Outcome(
            AttemptOutcome.LOST, error_type=error_type, error_message=message
        )
    ended = transitions.end_attempt(held.fence, outcome, using=using, lease_expired=lease_expired)
    if ended is not None:
        logger.warning(
            "batchtasks attempt lost task=%s attempt=%s worker=%s reason=%s next=%s",
            held.task_id,
            held.attempt,
            held.worker,
            error_type,
            ended.state,
        )
        if not ended.runs_again:
            events.finished(held.task_id, held.type_name, using=using)
        depends.act_on(ended.settled, using)
    return ended


def give_back(fences: list[transitions.Fence], pid: int, *, using: str) -> tuple[set[str], int]:
    """The claimed attempts of a message that never started, because its process
    (``pid``, gone now) was killed for the attempt ahead of them: each runs again as the
    same attempt (``transitions.release``), not as a lost run; one asked to cancel ends
    cancelled. Returns the queues to dispatch, and how many were given back."""
    queues: set[str] = set()
    flags = cancel_flags(fences, using=using)
    cancelled = [f for f in fences if flags.get(f.task_id)]
    for fence in cancelled:
        held = held_attempt(fence, using=using)
        outcome = transitions.Outcome(AttemptOutcome.CANCELLED, error_message=CANCELLED_WAITING)
        ended = transitions.end_attempt(fence, outcome, using=using)
        if ended is not None and held is not None:
            events.finished(fence.task_id, held.type_name, using=using)
            queues.add(held.queue)
        if ended is not None:
            depends.act_on(ended.settled, using)
    released = transitions.release([f for f in fences if f not in cancelled], pid, using=using)
    if released:
        logger.warning(
            "batchtasks attempts given back pid=%s tasks=%s reason=killed-ahead-of-them",
            pid,
            ",".join(str(task_id) for task_id, _ in released),
        )
    queues.update(queue for _, queue in released)
    return queues, len(released)
