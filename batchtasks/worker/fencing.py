"""Self-fencing: a worker that cannot renew its leases stops its runs before they run out.

The fence in the database refuses the writes of a run whose lease another worker has
taken over, but not the run itself: cut off PostgreSQL, a worker would go on running an
attempt while another worker runs the next one (the task's side effects twice at once).
So the worker keeps count of its leases without asking the database. A lease lasts
``LEASE_SECONDS`` from the moment the statement that set it was answered, so at least
that long from the moment it was sent, by this host's ``CLOCK_MONOTONIC``: from the
claim of a run's message (the pool process notes when it sent it, ``running``), and from
each renewal the agent's heartbeat sent and saw answered (``running.horizon``). The later
of the two is when the run's lease ends at the earliest; nobody can take the attempt over
before then.

``kill_grace() + margin()`` seconds before that end (``KILL_GRACE`` and 1.5 s, or a
quarter and an eighth of the lease if that is less), the agent's local thread (which
never waits on the database) stops the run: SIGTERM with a stop request of kind
``fenced``, which raises ``TaskStopped`` in the plugin, and ``kill_grace()`` later a
SIGKILL of the process and what it started, without waiting for the finishes it holds
unwritten (they cannot be written either). A fenced run writes nothing: its attempt
stays the database's to end, as a lost run, by whichever worker reaches it first (this
one once its heartbeat gets through, or another once the lease has run out), and the
task runs again. A pool process does not start a run of its message once that run's
lease is that close to its end (the first too: a claim whose answer waited out a
partition); those runs are lost runs too.

With the default settings (30 s leases, a beat every 5 s, 5 s kill grace) a worker stops
its runs 23.5 s after the last renewal it saw answered: five missed beats. A healthy
worker whose beats are answered never comes near it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from ..core.conf import get_settings
from ..transitions import Fence
from . import running
from .stopping import FENCED, Stopper

#: Seconds before a lease's earliest end by which the fenced run is gone (SIGKILLed):
#: the agent's step, a loaded host, a kill that takes a moment.
MARGIN = 1.5


def kill_grace() -> float:
    """Seconds between a fenced run's SIGTERM and its SIGKILL."""
    settings = get_settings()
    return min(settings.KILL_GRACE, settings.LEASE_SECONDS / 4)


def margin() -> float:
    return min(MARGIN, get_settings().LEASE_SECONDS / 8)


def stop_at(claimed: float) -> float:
    """When (monotonic s) to begin stopping a run whose message's claim was sent at
    ``claimed``, unless a renewal is seen answered before."""
    lease_end = max(running.horizon(), claimed + get_settings().LEASE_SECONDS)
    return lease_end - kill_grace() - margin()


def may_start() -> bool:
    """Whether this pool process may start the next run of its message (see above); the
    first too, in case the claim's answer came late (it waited out a partition)."""
    claimed = running.claimed()
    return not claimed or time.monotonic() < stop_at(claimed)


class SelfFence:
    """The agent's check of the runs its pool processes hold (see the module text)."""

    def __init__(self, stopper: Stopper) -> None:
        self.stopper = stopper

    def check(self, pids: Iterable[int], instance: str) -> float | None:
        """Stop the runs too close to the end of their leases; the seconds until the
        next one would be (``None``: none running)."""
        now = time.monotonic()
        due: list[float] = []
        for pid in pids:
            slot = running.slot_of(pid)
            if slot is None or not slot.claimed:  # not claimed by a message of this worker
                continue
            at = stop_at(slot.claimed)
            if now >= at:
                fence = Fence(slot.task_id, slot.attempt, instance)
                self.stopper.stop(fence, pid, reason=FENCED, grace=0.0, kill_grace=kill_grace())
            else:
                due.append(at - now)
        return min(due, default=None)
