"""Time limits of inline runs, enforced per task by the worker's agent (main process).

Celery enforces time limits per message, so a message of several tasks could not have
them per task. The agent does instead: each pool process notes in its ``running`` slot
when its plugin started (``CLOCK_MONOTONIC``, the same clock in every process of the
host) and the type's ``soft_timeout`` and ``timeout``; the clock of a task therefore
starts when its own plugin starts, not at the claim of its message. While this worker
holds any run message, the agent reads the slots of the pool processes running them
every ``STEP_SECONDS`` (a few file reads; nothing while the worker is idle), and sooner
when a limit falls due. Past the soft limit it raises ``SoftTimeLimitExceeded`` in the
plugin, once; past the hard limit it stops the process (``stopping``): SIGTERM raises
``TimeLimitExceeded`` in the plugin, and ``KILL_GRACE`` later a process that did not
unwind is SIGKILLed with its children (billiard starts a fresh one), after the
successful finishes it holds are written; its attempt fails with the same error, and
the tasks behind it in its message are given back. Either way the outcome is the one
Celery's limits gave: ``SoftTimeLimitExceeded`` as the plugin lets it go,
``TimeLimitExceeded`` a failure that may run again.

Runs in a child process or an executor keep Celery's limits on their (one-task)
messages: their supervisor in the pool process enforces them (``isolation.supervise``).
Messages of inline types keep a Celery hard limit as an outer safety net only
(``transport.publish.celery_limits``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from celery.worker import state as celery_state

from ..transitions import Fence
from . import running
from .heartbeat import attempts_of
from .stopping import HARD_LIMIT, Stopper

#: How often the slots are read while this worker holds run messages.
STEP_SECONDS = 0.2


def busy_pids() -> set[int] | None:
    """The pool processes running run messages of this worker now; ``None`` if it holds
    none at all (received or running). Empty if Celery's sets could not be read."""
    for _ in range(10):
        try:
            waiting = any(attempts_of(r) for r in list(celery_state.reserved_requests))
            requests = [r for r in list(celery_state.active_requests) if attempts_of(r)]
            break
        except RuntimeError:  # changed size while being copied: try again
            continue
    else:
        return set()
    if not waiting and not requests:
        return None
    pids = {getattr(r, "worker_pid", None) for r in requests}
    return {pid for pid in pids if isinstance(pid, int)}


class TimeLimits:
    """Signals the runs of this worker that are past their time limits."""

    def __init__(self, stopper: Stopper) -> None:
        self.stopper = stopper
        #: ``(pid, task id, attempt)`` whose soft limit was signalled.
        self._soft_sent: set[tuple[int, int, int]] = set()

    def check(self, pids: Iterable[int], instance: str) -> float | None:
        """Signal what is past its limits; the seconds until the next limit of a run
        seen falls due (``None``: no timed run is running)."""
        now = time.monotonic()
        due: list[float] = []
        sent: set[tuple[int, int, int]] = set()
        read = set(pids)
        for pid in read:
            slot = running.slot_of(pid)
            if slot is None or not (slot.soft or slot.hard):
                continue
            fence = Fence(slot.task_id, slot.attempt, instance)
            elapsed = now - slot.started
            if slot.hard and elapsed >= slot.hard:
                self.stopper.stop(fence, pid, reason=HARD_LIMIT, grace=0.0)
                continue
            if slot.hard:
                due.append(slot.hard - elapsed)
            key = (pid, slot.task_id, slot.attempt)
            if slot.soft and key not in self._soft_sent:
                if elapsed >= slot.soft:
                    self.stopper.soft_limit(fence, pid)
                else:
                    due.append(slot.soft - elapsed)
                    continue
            if slot.soft:
                sent.add(key)
        # Forget the soft limits of runs that ended (their process was read; never
        # signal one twice because a read was missed).
        self._soft_sent = {key for key in self._soft_sent if key[0] not in read} | sent
        return min(due, default=None)
