"""The loop in the pool process that watches one child process group: it reads the
child's output line by line, and stops the group when its task is cancelled, when it
stays silent past the inactivity timeout, or when Celery's soft time limit strikes.

Last activity is this loop's own monotonic clock: the time of the child's last life
sign (a progress report of a Python child, any output line of a program).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Protocol

from celery.exceptions import SoftTimeLimitExceeded

from ...core.conf import get_settings
from ...core.exceptions import InactivityTimeout, TaskCancelled
from ...core.plugin import TaskContext
from .reaper import Orphans

logger = logging.getLogger(__name__)

#: Seconds between two checks for cancel, inactivity and escalation.
TICK = 0.05
#: Longest line kept whole (a ``ResultData:`` line may be as large as a result).
MAX_LINE = 4 * 1024 * 1024
#: Seconds to read what the group wrote before it was killed.
DRAIN_SECONDS = 2.0

CANCEL = "cancel"
INACTIVE = "inactive"
SOFT_LIMIT = "soft time limit"


class Forked(Protocol):
    """A child this process did not start (``forkserver.Forked``): its parent says when
    it ended."""

    pid: int

    def exited(self, timeout: float = 0.0) -> bool: ...

    def wait(self) -> int: ...


class _Lines:
    """Splits a stream's bytes into text lines for ``handler``."""

    def __init__(self, handler: Callable[[str], None]) -> None:
        self.handler = handler
        self.buffer = b""

    def feed(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        if len(self.buffer) > MAX_LINE:
            lines.append(self.buffer)
            self.buffer = b""
        for line in lines:
            self.handler(line.decode(errors="replace").rstrip("\r"))

    def close(self) -> None:
        if self.buffer:
            self.handler(self.buffer.decode(errors="replace"))
            self.buffer = b""


class Supervisor:
    """Watches one child, the leader of its own process group (see the module text)."""

    def __init__(
        self,
        process: subprocess.Popen[bytes] | Forked,
        context: TaskContext,
        *,
        inactivity: int | None,
        on_cancel: Callable[[], None] | None = None,
        on_soft_limit: Callable[[], None] | None = None,
        orphans: Orphans | None = None,
    ) -> None:
        self.process = process
        #: The attempt's processes that left its group, to reap and, at its end, to kill.
        self.orphans = orphans
        self.context = context
        self.inactivity = inactivity
        #: Asks the child to stop by itself (``None``: it cannot, terminate it at once).
        self.on_cancel = on_cancel
        self.on_soft_limit = on_soft_limit
        #: Why the supervisor stopped the child (``None``: it did not).
        self.reason: str | None = None
        self._last_active = time.monotonic()
        self._stop_at = 0.0
        self._terminated_at: float | None = None
        self._killed = False
        self._selector = selectors.DefaultSelector()
        self._pause = 0.0005

    def active(self) -> None:
        """The child just gave a life sign."""
        self._last_active = time.monotonic()

    def watch(self, streams: dict[int, Callable[[str], None]]) -> None:
        """Read ``streams`` (file descriptors → line handlers) until the child exits."""
        for fd, handler in streams.items():
            os.set_blocking(fd, False)
            self._selector.register(fd, selectors.EVENT_READ, _Lines(handler))
        while not self._exited():
            try:
                self._read(TICK)
                self._check()
                if self.orphans is not None:
                    self.orphans.reap_exited(self.process.pid)
            except SoftTimeLimitExceeded:
                self._soft_limit()

    def finish(self) -> None:
        """Kill what is left of the group and the processes that left it, reap the child,
        read the rest of its output."""
        self.signal_group(signal.SIGKILL)
        self.process.wait()
        # Before the drain: an orphan may hold the child's output open.
        killed = self.orphans.kill() if self.orphans is not None else 0
        if killed:
            logger.warning(
                "batchtasks killed processes that left the child's group pid=%s processes=%d",
                self.process.pid,
                killed,
            )
        deadline = time.monotonic() + DRAIN_SECONDS
        while self._selector.get_map() and time.monotonic() < deadline:
            self._read(TICK)
        for key in list(self._selector.get_map().values()):
            self._close(key)
        self._selector.close()

    def raise_for_stop(self) -> None:
        """Raise what the supervisor stopping the child means for the attempt."""
        if self.reason == INACTIVE:
            raise InactivityTimeout(
                f"Task {self.context.task_id} gave no sign of life for {self.inactivity} s "
                "(its type's inactivity_timeout) and was stopped."
            )
        if self.reason == CANCEL:
            raise TaskCancelled(
                f"Task {self.context.task_id} was cancelled; its process was stopped."
            )

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the child's whole process group (grandchildren too)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def _exited(self) -> bool:
        """Whether the child ended (not reaped yet, so its group id stays its own)."""
        if not isinstance(self.process, subprocess.Popen):
            return self.process.exited()
        try:
            info = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None and info.si_pid == self.process.pid

    def _read(self, timeout: float) -> None:
        if not self._selector.get_map():
            # Its output closed: it is exiting (or runs on without a word).
            if not isinstance(self.process, subprocess.Popen):
                self.process.exited(timeout)  # its parent's word wakes this at once
                return
            # Look again soon, then less and less often.
            self._pause = min(self._pause * 2, timeout)
            time.sleep(self._pause)
            return
        for key, _ in self._selector.select(timeout):
            try:
                data = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if data:
                key.data.feed(data)
            else:
                self._close(key)

    def _close(self, key: selectors.SelectorKey) -> None:
        self._selector.unregister(key.fd)
        key.data.close()

    def _check(self) -> None:
        now = time.monotonic()
        if self.reason is None:
            if self.context.cancel_requested():
                self.reason = CANCEL
                if self.on_cancel is not None:
                    self.on_cancel()
                    self._stop_at = now + get_settings().CANCEL_GRACE
                else:
                    self._stop_at = now
            elif self.inactivity is not None and now - self._last_active > self.inactivity:
                self.reason, self._stop_at = INACTIVE, now
        if self.reason is not None and self._terminated_at is None and now >= self._stop_at:
            self._terminate(now)
        elif (
            self._terminated_at is not None
            and not self._killed
            and now - self._terminated_at >= get_settings().KILL_GRACE
        ):
            self._killed = True
            self._log("SIGKILL")
            self.signal_group(signal.SIGKILL)

    def _terminate(self, now: float) -> None:
        self._terminated_at = now
        self._log("SIGTERM")
        self.signal_group(signal.SIGTERM)

    def _soft_limit(self) -> None:
        if self.on_soft_limit is not None:
            self.on_soft_limit()
        elif self._terminated_at is None:
            self.reason = self.reason or SOFT_LIMIT
            self._terminate(time.monotonic())

    def _log(self, signame: str) -> None:
        logger.warning(
            "batchtasks stopping child task=%s attempt=%s pid=%s reason=%s signal=%s",
            self.context.task_id,
            self.context.attempt,
            self.process.pid,
            self.reason,
            signame,
        )
