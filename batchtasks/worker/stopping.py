"""Stopping a running attempt's process: after an ignored cancel, or when the attempt is
no longer this worker's (its lease was lost).

The main process never touches Celery's request objects. It leaves a stop request for
the pool process running the attempt (a file named by its pid, naming the attempt) and
sends it SIGTERM. The pool process's SIGTERM handler raises ``TaskStopped`` inside the
plugin if the request names the attempt it is running (the plugin unwinds, its
``finally`` blocks run, the runner records the outcome), ignores a request for an
attempt it no longer runs (so a late SIGTERM never hits the next task), and with no
request hands the signal to the pool's own handler (billiard's shutdown, Celery's hard
time limits). A process still
running the attempt ``KILL_GRACE`` seconds later is SIGKILLed with everything it
started. The slot is only freed when the attempt's end is written: by the runner, or
once the process is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from ..core.exceptions import TaskStopped
from ..transitions import Fence
from . import identity

logger = logging.getLogger(__name__)


# --- in the pool process ------------------------------------------------------------------
@dataclass
class _Running:
    fence: Fence | None = None
    #: The SIGTERM handler the pool had before the plugin started (billiard's own).
    previous: Any = None


_running = _Running()


@contextlib.contextmanager
def plugin_running(fence: Fence) -> Iterator[None]:
    """While ``fence``'s plugin runs, SIGTERM may stop it (see the module text)."""
    installed = threading.current_thread() is threading.main_thread()
    if installed:
        _install()
    _running.fence = fence
    try:
        yield
    finally:
        _running.fence = None
        _remove_request(os.getpid(), fence)
        if installed:
            _install()  # whatever the plugin did to it (even SIG_IGN)


def _install() -> None:
    """Put ``_on_sigterm`` in front of the pool's own SIGTERM handler (billiard installs
    its handler after Celery's process initialiser, so this happens at the first run)."""
    current = signal.getsignal(signal.SIGTERM)
    if current is not _on_sigterm:
        if _running.previous is None:
            _running.previous = current
        signal.signal(signal.SIGTERM, _on_sigterm)


def _remove_request(pid: int, fence: Fence) -> None:
    """Remove the stop request for ``pid`` if it names ``fence`` (it may name another)."""
    path = _request_path(pid)
    if path is not None:
        with contextlib.suppress(OSError):
            if path.read_text() == f"{fence.task_id} {fence.attempt}":
                path.unlink()


def _request_path(pid: int) -> Path | None:
    folder = identity.stop_dir()
    return Path(folder, str(pid)) if folder else None


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    path = _request_path(os.getpid())
    try:
        requested = path.read_text().split() if path is not None else None
    except OSError:
        requested = None
    current = _running.fence
    if requested is not None:
        if current is not None and requested == [str(current.task_id), str(current.attempt)]:
            raise TaskStopped(
                f"Task {current.task_id} was stopped by its worker (a cancel it did not "
                "honour, or a lost lease)."
            )
        return  # a request for an attempt this process no longer runs: ignore it
    # Not a stop request (Celery's shutdown, a hard time limit): the pool's own handling.
    previous = _running.previous
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


# --- in the main process --------------------------------------------------------------------
@dataclass
class _Stopping:
    pid: int
    reason: str
    since: float
    grace: float
    terminated_at: float | None = None
    killed_at: float | None = None


class Stopper:
    """Brings down the processes of attempts that must stop, step by step; the agent
    calls ``step`` often while any is pending."""

    def __init__(self, still_running: Callable[[Fence], bool | None]) -> None:
        #: Whether the attempt still runs here (``None``: cannot tell now).
        self._still_running = still_running
        self._pending: dict[Fence, _Stopping] = {}

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    @property
    def signalled(self) -> bool:
        """Whether a signal went to any process that must stop (its end is near)."""
        return any(s.terminated_at is not None for s in self._pending.values())

    def stop(self, fence: Fence, pid: int | None, *, reason: str, grace: float) -> None:
        """Stop ``fence``'s process (``pid``) unless it ends by itself within ``grace`` s."""
        if pid is None or pid == os.getpid():
            logger.warning(
                "batchtasks cannot stop task=%s attempt=%s: it runs in the worker's own "
                "process (use the prefork pool)",
                fence.task_id,
                fence.attempt,
            )
            return
        if fence not in self._pending:
            self._pending[fence] = _Stopping(pid, reason, time.monotonic(), grace)

    def forget(self, keep: set[Fence]) -> None:
        """Drop attempts that ended (only those in ``keep`` are still running here)."""
        for fence in [f for f in self._pending if f not in keep]:
            self._clear(fence)

    def step(self, *, kill_grace: float) -> None:
        now = time.monotonic()
        for fence, stopping in list(self._pending.items()):
            if not _exists(stopping.pid):
                continue  # gone; its end is written by whoever sees that first
            if stopping.terminated_at is None:
                if now - stopping.since >= stopping.grace:
                    self._terminate(fence, stopping)
            elif stopping.killed_at is None and now - stopping.terminated_at >= kill_grace:
                running = self._still_running(fence)
                if running:
                    self._kill(fence, stopping)
                elif running is not None:
                    self._clear(fence)

    def _terminate(self, fence: Fence, stopping: _Stopping) -> None:
        path = _request_path(stopping.pid)
        if path is not None:
            path.write_text(f"{fence.task_id} {fence.attempt}")
        stopping.terminated_at = time.monotonic()
        logger.warning(
            "batchtasks stopping task=%s attempt=%s pid=%s reason=%s signal=SIGTERM",
            fence.task_id,
            fence.attempt,
            stopping.pid,
            stopping.reason,
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(stopping.pid, signal.SIGTERM)

    def _kill(self, fence: Fence, stopping: _Stopping) -> None:
        try:
            family = [psutil.Process(stopping.pid)]
            family += family[0].children(recursive=True)
        except psutil.Error:
            return
        stopping.killed_at = time.monotonic()
        logger.warning(
            "batchtasks stopping task=%s attempt=%s pid=%s reason=%s signal=SIGKILL processes=%d",
            fence.task_id,
            fence.attempt,
            stopping.pid,
            stopping.reason,
            len(family),
        )
        for process in family:
            with contextlib.suppress(psutil.Error):
                process.kill()

    def _clear(self, fence: Fence) -> None:
        _remove_request(self._pending.pop(fence).pid, fence)


def _exists(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
