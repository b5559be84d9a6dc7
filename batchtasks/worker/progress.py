"""Progress writes of a running attempt: at most one per ``PROGRESS_INTERVAL``, and a
report held back by that throttle is written when the interval is up, even if the
plugin then stays silent (a timer thread in the pool process writes it).

The timer thread borrows the runner's state connection rather than opening one of
its own; a lock keeps the two threads' statements apart. It also writes the finishes a
message holds (``worker.completions``) when their window is up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from django.db import DatabaseError, connections

from .. import transitions
from ..db.connections import reconnecting, state_lock

logger = logging.getLogger(__name__)


class ProgressWriter:
    """Throttled progress of one attempt; ``cancel`` tells what the last write learnt."""

    def __init__(self, fence: transitions.Fence, using: str, interval: float) -> None:
        self.fence = fence
        self.using = using
        self.interval = interval
        #: True once a write found a cancel requested or the attempt no longer ours.
        self.cancel = False
        self._pending: tuple[int, str] | None = None
        self._last_write = float("-inf")
        self._timer: _Timer | None = None

    def report(self, percent: int, message: str) -> None:
        with state_lock:
            self._pending = (percent, message)
            wait = self._last_write + self.interval - time.monotonic()
            if wait <= 0:
                self._flush()
                return
        if self._timer is None:
            self._timer = timer_for(self.using)
        self._timer.schedule(PROGRESS, wait, self._flush_locked)

    def take_pending(self) -> tuple[int, str] | None:
        """Stop the timer; the progress not written yet (it goes out with the outcome)."""
        with state_lock:
            if self._timer is not None:
                self._timer.schedule(PROGRESS, None, None)
            pending, self._pending = self._pending, None
            return pending

    def _flush_locked(self) -> None:
        with state_lock:
            self._flush()

    def _flush(self) -> None:
        if self._pending is None:
            return
        percent, message = self._pending
        self._pending = None
        self._last_write = time.monotonic()
        fence, using = self.fence, self.using
        try:
            cancel = reconnecting(
                lambda: transitions.record_progress(fence, percent, message, using=using), using
            )
        except DatabaseError:  # progress is not worth failing the task for
            logger.warning("batchtasks progress not written task=%s", fence.task_id, exc_info=True)
            return
        self.cancel = self.cancel or cancel is None or cancel


#: The timer's keys: the running attempt's held-back progress, a message's held finishes.
PROGRESS, COMPLETIONS = "progress", "completions"


class _Timer:
    """One daemon thread per pool process that runs each scheduled action when due (one
    per key: scheduling a key again replaces its action)."""

    def __init__(self, using: str) -> None:
        self._wrapper = connections[using]
        self._wrapper.inc_thread_sharing()
        self._using = using
        self._wake = threading.Condition()
        self._due: dict[str, tuple[float, Callable[[], None]]] = {}
        threading.Thread(target=self._loop, name="batchtasks-progress", daemon=True).start()

    def schedule(self, key: str, delay: float | None, action: Callable[[], None] | None) -> None:
        """Run ``action`` in ``delay`` seconds (``None``: cancel what ``key`` had)."""
        with self._wake:
            if delay is None or action is None:
                self._due.pop(key, None)  # the thread finds nothing due when it wakes
                return
            due = time.monotonic() + delay
            earliest = min((at for at, _ in self._due.values()), default=float("inf"))
            self._due[key] = (due, action)
            if due < earliest:
                self._wake.notify()

    def _loop(self) -> None:
        connections[self._using] = self._wrapper  # the runner's connection, shared
        while True:
            with self._wake:
                while True:
                    now = time.monotonic()
                    ready = [key for key, (at, _) in self._due.items() if at <= now]
                    if ready:
                        break
                    earliest = min((at for at, _ in self._due.values()), default=None)
                    self._wake.wait(None if earliest is None else earliest - now)
                actions = [self._due.pop(key)[1] for key in ready]
            for action in actions:
                action()


_timers: dict[str, _Timer] = {}


def timer_for(using: str) -> _Timer:
    """This pool process's timer thread for state connection ``using``."""
    timer = _timers.get(using)
    if timer is None:
        timer = _timers[using] = _Timer(using)
    return timer
