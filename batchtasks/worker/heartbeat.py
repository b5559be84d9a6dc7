"""A worker's heartbeat: renew the leases of the attempts it runs, end those whose
process is gone, and have stopped those that must stop.

What the worker holds is read from Celery's own bookkeeping of the requests it has
received and started (a read-only copy, taken again when the consumer thread changes
it meanwhile). If it cannot be read, the beat fails closed: it renews every lease of
this instance and ends nothing.

An attempt this instance runs in the database but no pool process holds any more is
ended as vanished (a lost run) only at the second beat in a row that misses it: a pool
process may hold a finished attempt for a moment before it writes its success with
others (``worker.completions``, within ``COMPLETION_WINDOW``, far less than a beat), and
such a finish is not lost. A pool process that died meanwhile costs its held finishes
one beat more before they run again.

Each renewal answered moves the moment until which this worker's leases hold at least
(``running.set_horizon``: from when the renewal was sent); the agent's local thread stops
the runs whose leases would otherwise run out unrenewed (``worker.fencing``), and watches
the inactivity timeouts and time limits of inline runs, without waiting on the database.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.worker import state as celery_state

from .. import transitions
from ..core.conf import get_settings
from ..services import leases
from ..services.workers import Identity
from ..transport.publish import (
    RUN_MANY_TASK_NAME,
    RUN_TASK_NAME,
    parse_many_args,
    parse_message_id,
)
from .running import runs_behind, set_horizon
from .stopping import Stopper

logger = logging.getLogger(__name__)


def in_flight() -> set[tuple[int, int]] | None:
    """``(task id, attempt)`` of the run messages this worker holds (received, waiting
    for or in a pool process); ``None`` if Celery's sets could not be read."""
    requests = _requests()
    if requests is None:
        return None
    held: set[tuple[int, int]] = set()
    for request in requests:
        held.update(attempts_of(request))
    return held


def behind(fence: transitions.Fence) -> list[tuple[int, int]]:
    """The runs that follow ``fence``'s in the message this worker runs it from (they run
    after it, in order, in the same pool process); none if that cannot be told."""
    key = (fence.task_id, fence.attempt)
    for request in _requests() or ():
        runs = attempts_of(request)
        if key in runs:
            return runs[runs.index(key) + 1 :]
    return []


def _requests() -> list[Any] | None:
    """A copy of the requests Celery holds; ``None`` if it could not be taken."""
    for _ in range(10):
        try:
            return [*celery_state.reserved_requests, *celery_state.active_requests]
        except RuntimeError:  # changed size while being copied: try again
            continue
    return None


def _started() -> dict[tuple[int, int], int]:
    """The runs of the messages pool processes have taken, with the pid of each."""
    started: dict[tuple[int, int], int] = {}
    for _ in range(10):
        try:
            requests = list(celery_state.active_requests)
        except RuntimeError:  # changed size while being copied: try again
            continue
        for request in requests:
            pid = getattr(request, "worker_pid", None)
            if pid:
                started.update(dict.fromkeys(attempts_of(request), pid))
        break
    return started


def attempts_of(request: Any) -> list[tuple[int, int]]:
    """``(task id, attempt)`` of each run a Celery request carries (none: not ours)."""
    name = getattr(request, "name", None)
    if name == RUN_TASK_NAME:
        key = parse_message_id(getattr(request, "id", "") or "")
        return [key] if key is not None else []
    if name == RUN_MANY_TASK_NAME:
        return parse_many_args(getattr(request, "args", None)) or []
    return []


def give_back_unstarted(
    gone: list[leases.HeldAttempt], db: str
) -> tuple[set[str], list[leases.HeldAttempt]]:
    """Of attempts gone with their pool process (killed from outside: the OOM killer,
    say), give back (``leases.give_back``) those its message had not started yet, as its
    notes say (``running.runs_behind``): they run again as they were, not as lost runs.
    Returns the queues to dispatch and the attempts still to end as lost runs (all of
    them without the notes). The heartbeat's vanished attempts and Celery's word of a
    lost pool process (``signals``) both come here."""
    queues: set[str] = set()
    rest = list(gone)
    for pid in {a.pid for a in gone if a.pid is not None}:
        behind = set(runs_behind(pid))
        mine = [a for a in rest if a.pid == pid and (a.task_id, a.attempt) in behind]
        if mine:
            fences = [transitions.Fence(a.task_id, a.attempt, a.instance) for a in mine]
            queues |= leases.give_back(fences, pid, using=db)[0]
            rest = [a for a in rest if a not in mine]
    return queues, rest


class Heartbeat:
    """One worker boot's heartbeat (see the module text)."""

    def __init__(self, identity: Identity, stopper: Stopper) -> None:
        self.identity = identity
        self.stopper = stopper
        #: Attempts renewed at the last beat, with the pid running each.
        self._ours: dict[tuple[int, int], int | None] = {}
        #: Run messages in hand at the last beat.
        self.in_hand = 0
        #: Attempts running here that no pool process held at the last beat.
        self._missing: set[tuple[int, int]] = set()

    def beat(self, db: str) -> set[str]:
        """One beat; returns the queues whose slots it freed."""
        instance = self.identity.instance
        # The database first, then what we hold: an attempt claimed in between is then
        # missing from `running`, never wrongly missing from `held`.
        running = leases.running_on(instance, using=db)
        held = in_flight()
        settings = get_settings()
        freed: set[str] = set()
        if held is None:
            logger.warning("batchtasks cannot read the requests in hand; beat keeps all leases")
            sent = time.monotonic()  # the leases renewed last from here at least
            renewed = transitions.renew_leases(instance, None, settings.LEASE_SECONDS, using=db)
        else:
            missing, vanished = set(), []
            for attempt in running:
                key = (attempt.task_id, attempt.attempt)
                if key in held:
                    continue
                if key not in self._missing:  # perhaps a finish held to be written
                    missing.add(key)
                else:
                    vanished.append(attempt)
            self._missing = missing
            given_back, vanished = give_back_unstarted(vanished, db)
            freed |= given_back
            for attempt in vanished:
                if self._end_vanished(attempt, db):
                    freed.add(attempt.queue)
            sent = time.monotonic()  # the leases renewed last from here at least
            renewed = transitions.renew_leases(
                instance, list(held), settings.LEASE_SECONDS, using=db
            )
        set_horizon(sent + settings.LEASE_SECONDS)
        self._stop_what_must_stop(renewed, held, db)
        self.in_hand = len(held) if held is not None else len(renewed)
        return freed

    def _end_vanished(self, held: leases.HeldAttempt, db: str) -> bool:
        """End an attempt no pool process of this worker held at this beat nor the last."""
        if held.overran:
            reason, message = leases.TIME_LIMIT, leases.time_limit_message(held)
        else:
            reason, message = leases.WORKER_LOST, leases.worker_lost_message(held)
        return leases.lose(held, reason, message, using=db) is not None

    def _stop_what_must_stop(
        self, renewed: list[transitions.Renewed], held: set[tuple[int, int]] | None, db: str
    ) -> None:
        instance = self.identity.instance
        now_ours = {(r.task_id, r.attempt): r.pid for r in renewed}
        for r in renewed:
            fence = transitions.Fence(r.task_id, r.attempt, instance)
            if r.cancel_requested:
                self.stopper.stop(
                    fence, r.pid, reason="cancel ignored", grace=get_settings().CANCEL_GRACE
                )
        if held is not None:
            # Still running here, but ended as a lost run since (this worker was silent
            # for a lease): it must not go on unseen. Ours at the last beat, or started by
            # a pool process before a freeze that came ahead of any beat renewing it.
            suspects = {**_started(), **self._ours}
            suspects = {k: p for k, p in suspects.items() if k in held and k not in now_ours}
            for key in sorted(leases.ended_as_lost(list(suspects), using=db)):
                fence = transitions.Fence(*key, instance)
                self.stopper.stop(fence, suspects[key], reason="lease lost", grace=0.0)
            keep = {transitions.Fence(*key, instance) for key in held}
            self.stopper.forget(keep)
        self._ours = now_ours
