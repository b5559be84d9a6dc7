"""Progress writes of a running attempt: at most one per ``PROGRESS_INTERVAL``, and a
report held back by that throttle is written when the interval is up, even if the
plugin then stays silent (a timer thread in the pool process writes it).

The timer thread borrows the runner's state connection rather than opening one of
its own; a lock keeps the two threads' statements apart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from django.db import DatabaseError, connections

from .. import transitions
from ..db.connections import reconnecting

logger = logging.getLogger(__name__)

#: Held by whichever thread of a pool process uses its state connection.
state_lock = threading.RLock()


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
            self._timer = _timer_for(self.using)
        self._timer.schedule(wait, self._flush_locked)

    def take_pending(self) -> tuple[int, str] | None:
        """Stop the timer; the progress not written yet (it goes out with the outcome)."""
        with state_lock:
            if self._timer is not None:
                self._timer.schedule(None, None)
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


class _Timer:
    """One daemon thread per pool process that runs the next scheduled flush."""

    def __init__(self, using: str) -> None:
        self._wrapper = connections[using]
        self._wrapper.inc_thread_sharing()
        self._using = using
        self._wake = threading.Condition()
        self._due: float | None = None
        self._action: Callable[[], None] | None = None
        threading.Thread(target=self._loop, name="batchtasks-progress", daemon=True).start()

    def schedule(self, delay: float | None, action: Callable[[], None] | None) -> None:
        with self._wake:
            self._due = None if delay is None else time.monotonic() + delay
            self._action = action
            self._wake.notify()

    def _loop(self) -> None:
        connections[self._using] = self._wrapper  # the runner's connection, shared
        while True:
            with self._wake:
                while self._due is None or time.monotonic() < self._due:
                    timeout = None if self._due is None else self._due - time.monotonic()
                    self._wake.wait(timeout)
                action, self._due, self._action = self._action, None, None
            if action is not None:
                action()


_timers: dict[str, _Timer] = {}


def _timer_for(using: str) -> _Timer:
    timer = _timers.get(using)
    if timer is None:
        timer = _timers[using] = _Timer(using)
    return timer
