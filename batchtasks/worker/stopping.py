"""Stopping a running attempt's process: after an ignored cancel, when the attempt is
no longer this worker's (its lease was lost), or past its time limits.

The main process never touches Celery's request objects. It leaves a stop request for
the pool process running the attempt (a file named by its pid, naming the attempt) and
sends it SIGTERM. The pool process's SIGTERM handler raises ``TaskStopped`` inside the
plugin if the request names the attempt it is running (the plugin unwinds, its
``finally`` blocks run, the runner records the outcome), ignores a request for an
attempt it no longer runs (so a late SIGTERM never hits the next task), and with no
request hands the signal to the pool's own handler (billiard's shutdown, Celery's hard
time limits). A process still running the attempt ``KILL_GRACE`` seconds later is
SIGKILLed with everything it started, though not while the process still holds
successful finishes of its message unwritten (``running.held_by``; its timer thread
writes them within ``COMPLETION_WINDOW``): the kill waits for them, at most
``LEASE_SECONDS``, so that the tasks that ran before the killed one never run twice.
The slot is only freed when the attempt's end is written: by the runner, or once the
process is gone.

A process is only ever signalled for the attempt it runs at that moment (``running``:
each pool process notes it as a plugin starts). An attempt that waits behind another in
its message is never signalled: its grace begins when it starts, and a cancelled one is
dropped when its turn comes (``worker.batches``). When a kill takes a process down, the
attempts that waited behind the killed one in its message never started: the agent
gives them back (``services.leases.give_back``) instead of counting them as lost runs.
The one race left is a process that moves from the attempt to the next between the read
of its note and the SIGKILL, a few microseconds.

The inactivity watchdog of inline runs works the same way. While a plugin of a type
with an ``inactivity_timeout`` runs, its pool process keeps an activity file next to
the stop requests (``<pid>.active``, naming the attempt and the limit) whose mtime it
touches whenever the plugin reports progress (at most once a second, or a tenth of the
limit). The heartbeat, in the main process on the same host, compares that mtime with
the limit and stops an attempt that has been quiet too long: its stop request says
``inactive``, so the SIGTERM raises ``InactivityTimeout`` (a failure that may run
again) instead of ``TaskStopped``. A plugin that ignores the SIGTERM is SIGKILLed like
any other and ends as a lost run. Runs in a child process or an executor are watched
by their supervisor in the pool process instead (``worker.isolation.supervise``);
while one runs, its process group is registered here, so that a SIGTERM that is not a
stop request (Celery's hard time limit, a shutdown) kills that group before the pool
process goes.

Time limits of inline runs work the same way (``worker.timelimits`` decides when): a
request of kind ``soft`` raises ``SoftTimeLimitExceeded`` once (the plugin may catch
it and clean up; the request is removed so that the next SIGTERM is the pool's again),
and one of kind ``timeout`` raises ``TimeLimitExceeded``, the outcome Celery's hard
limit had: a failure that may run again. A plugin that catches that one and returns
fails all the same; one that does not unwind is SIGKILLed and its attempt ends with the
same failure.
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
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from ..core.exceptions import InactivityTimeout, TaskStopped
from ..transitions import Fence
from . import identity, running

logger = logging.getLogger(__name__)

#: The reason that makes a stop request an inactivity stop.
INACTIVE = "inactive"
#: The reasons of time-limit stops: the soft limit (a signal only), the hard limit.
SOFT_LIMIT, HARD_LIMIT = "soft", "timeout"
#: The reason of a stop before the run's lease runs out unrenewed (``worker.fencing``).
FENCED = "fenced"
#: Most seconds between two touches of an activity file (less for short limits).
TOUCH_INTERVAL = 1.0


# --- in the pool process ------------------------------------------------------------------
@dataclass
class _Running:
    fence: Fence | None = None
    #: Whether a stop request for ``fence`` came (its file is removed when the run ends).
    requested: bool = False
    #: The SIGTERM handler the pool had before the plugin started (billiard's own).
    previous: Any = None
    #: The process group of the child or executor running the attempt, if any.
    child_group: int | None = None
    #: The activity file of an inline run with an inactivity timeout, and its last touch.
    activity: Path | None = None
    touched: float = 0.0
    touch_every: float = TOUCH_INTERVAL
    #: The hard time limit of the run, and whether it struck.
    timeout: int | None = None
    timed_out: bool = False
    #: Whether a run was stopped because its lease could not be renewed (``fencing``):
    #: nothing of it is written, and its message's later runs do not start.
    fenced: bool = False


_running = _Running()


@contextlib.contextmanager
def plugin_running(
    fence: Fence,
    *,
    inactivity_timeout: int | None = None,
    soft_timeout: int | None = None,
    timeout: int | None = None,
) -> Iterator[None]:
    """While ``fence``'s plugin runs, SIGTERM may stop it, with ``inactivity_timeout``
    the heartbeat stops it once it is silent for that long, and the agent enforces
    ``soft_timeout`` and ``timeout`` counted from now (see the module text)."""
    installed = threading.current_thread() is threading.main_thread()
    if installed:
        _install()
    _running.fence = fence
    _running.timeout, _running.timed_out = timeout, False
    _running.activity = _start_activity(fence, inactivity_timeout)
    running.set_running(fence, soft=soft_timeout, hard=timeout)
    try:
        yield
        if _running.timed_out:  # the plugin caught the hard limit's error: it fails anyway
            raise TimeLimitExceeded(hard_limit_message(timeout))
    finally:
        running.set_running(None)
        _running.fence = None
        _running.timed_out = False
        if _running.activity is not None:
            with contextlib.suppress(OSError):
                _running.activity.unlink()
            _running.activity = None
        if _running.requested:  # else there is none (a look cost 7 us a run)
            _running.requested = False
            _remove_request(os.getpid(), fence)
        if installed:
            _install()  # whatever the plugin did to it (even SIG_IGN)


@contextlib.contextmanager
def child_group(pgid: int) -> Iterator[None]:
    """While a child process group runs the attempt, a SIGTERM that is not a stop request
    kills it first (a hard time limit must not leave it behind)."""
    _running.child_group = pgid
    try:
        yield
    finally:
        _running.child_group = None


def touch_activity() -> None:
    """The plugin just reported progress: the inline watchdog's life sign."""
    path = _running.activity
    now = time.monotonic()
    if path is not None and now - _running.touched >= _running.touch_every:
        _running.touched = now
        with contextlib.suppress(OSError):
            os.utime(path)


def _start_activity(fence: Fence, limit: int | None) -> Path | None:
    if limit is None:  # most types: no look at the environment for the folder
        return None
    folder = identity.stop_dir()
    if not folder:
        return None
    path = Path(folder, f"{os.getpid()}.active")
    path.write_text(f"{fence.task_id} {fence.attempt} {limit}")
    # Touched often enough that a plugin reporting within its limit never looks idle.
    _running.touch_every = min(TOUCH_INTERVAL, limit / 10)
    _running.touched = time.monotonic()
    return path


def overdue(fence: Fence, pid: int | None) -> bool:
    """Whether ``fence``, run inline by ``pid``, has been silent past its inactivity
    limit (main process; the file's mtime and this host's clock)."""
    folder = identity.stop_dir()
    if pid is None or not folder:
        return False
    path = Path(folder, f"{pid}.active")
    try:
        task_id, attempt, limit = path.read_text().split()
        quiet = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return False
    return [task_id, attempt] == [str(fence.task_id), str(fence.attempt)] and quiet > int(limit)


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
            if path.read_text().split()[:2] == [str(fence.task_id), str(fence.attempt)]:
                path.unlink()


def _request_path(pid: int) -> Path | None:
    folder = identity.stop_dir()
    return Path(folder, str(pid)) if folder else None


def take_fenced() -> bool:
    """Whether this pool process's last run was stopped by self-fencing (``fencing``);
    the mark is cleared."""
    fenced, _running.fenced = _running.fenced, False
    return fenced


def hard_limit_message(timeout: int | None) -> str:
    """The error message of an attempt stopped at its hard time limit by its worker."""
    return f"hard time limit of {timeout} s exceeded; worker {identity.current().name} stopped it"


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    path = _request_path(os.getpid())
    try:
        requested = path.read_text().split() if path is not None else None
    except OSError:
        requested = None
    current = _running.fence
    if requested is not None:
        if current is not None and requested[:2] == [str(current.task_id), str(current.attempt)]:
            kind = requested[2:]
            if kind == [SOFT_LIMIT]:  # once: a later SIGTERM is a stop or the pool's own
                with contextlib.suppress(OSError):
                    path.unlink()  # type: ignore[union-attr]
                raise SoftTimeLimitExceeded()  # as Celery's soft limit raises it
            _running.requested = True
            if kind == [INACTIVE]:
                raise InactivityTimeout(
                    f"Task {current.task_id} reported no progress for longer than its "
                    "inactivity_timeout and was stopped by its worker."
                )
            if kind == [HARD_LIMIT]:
                _running.timed_out = True
                raise TimeLimitExceeded(hard_limit_message(_running.timeout))
            if kind == [FENCED]:
                _running.fenced = True
                raise TaskStopped(
                    f"Task {current.task_id} was stopped by its worker: the worker could not "
                    "renew its lease (the database was out of reach), so another may run it."
                )
            raise TaskStopped(
                f"Task {current.task_id} was stopped by its worker (a cancel it did not "
                "honour, or a lost lease)."
            )
        if requested[2:] == [SOFT_LIMIT]:  # came late: it is spent
            with contextlib.suppress(OSError):
                path.unlink()  # type: ignore[union-attr]
        return  # a request for an attempt this process no longer runs: ignore it
    # Not a stop request (Celery's shutdown, a hard time limit): the pool's own handling,
    # after the child group of an isolated run (it is in a session of its own).
    if _running.child_group is not None:
        with contextlib.suppress(OSError):
            os.killpg(_running.child_group, signal.SIGKILL)
        # And what left the group (its orphans are ours: ``isolation.reaper``), now: the
        # pool may SIGKILL this process a tenth of a second from now.
        with contextlib.suppress(psutil.Error):
            for process in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    process.kill()
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
    #: Seconds from SIGTERM to SIGKILL, if not the agent's ``KILL_GRACE``.
    kill_grace: float | None = None


@dataclass(frozen=True)
class Killed:
    """A process SIGKILLed for ``fence``, and the attempts that waited behind it in its
    message (they never started)."""

    fence: Fence
    pid: int
    behind: list[tuple[int, int]]
    #: Whether the process was seen gone right after the kill.
    gone: bool
    #: Why it was stopped (``HARD_LIMIT``: its attempt ends as a time-limit failure).
    reason: str = ""


class Stopper:
    """Brings down the processes of attempts that must stop, step by step; the agent
    calls ``step`` often while any is pending."""

    def __init__(self, behind: Callable[[Fence], list[tuple[int, int]]]) -> None:
        #: The attempts that wait behind an attempt in the message that carries it.
        self._behind = behind
        self._pending: dict[Fence, _Stopping] = {}
        #: The agent's local thread steps; its database thread asks for stops too.
        self._lock = threading.RLock()

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    @property
    def signalled(self) -> bool:
        """Whether a signal went to any process that must stop (its end is near)."""
        with self._lock:
            return any(s.terminated_at is not None for s in self._pending.values())

    def stop(
        self,
        fence: Fence,
        pid: int | None,
        *,
        reason: str,
        grace: float,
        kill_grace: float | None = None,
    ) -> None:
        """Stop ``fence``'s process (``pid``) unless it ends by itself within ``grace`` s
        of starting to run it; SIGKILLed ``kill_grace`` s after its SIGTERM if given."""
        if pid is None or pid == os.getpid():
            logger.warning(
                "batchtasks cannot stop task=%s attempt=%s: it runs in the worker's own "
                "process (use the prefork pool)",
                fence.task_id,
                fence.attempt,
            )
            return
        with self._lock:
            if fence not in self._pending:
                self._pending[fence] = _Stopping(
                    pid, reason, time.monotonic(), grace, kill_grace=kill_grace
                )

    def forget(self, keep: set[Fence]) -> None:
        """Drop attempts that ended (only those in ``keep`` are still running here)."""
        with self._lock:
            for fence in [f for f in self._pending if f not in keep]:
                self._clear(fence)

    def soft_limit(self, fence: Fence, pid: int) -> None:
        """Raise ``SoftTimeLimitExceeded`` in ``fence``'s plugin, run by ``pid`` (unless
        a stop of it is under way)."""
        with self._lock:
            if fence in self._pending or pid == os.getpid():
                return
        path = _request_path(pid)
        if path is None:
            return
        path.write_text(f"{fence.task_id} {fence.attempt} {SOFT_LIMIT}")
        logger.warning(
            "batchtasks stopping task=%s attempt=%s pid=%s reason=%s signal=SIGTERM",
            fence.task_id,
            fence.attempt,
            pid,
            "soft time limit",
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)

    def step(self, *, kill_grace: float, held_wait: float = 0.0) -> list[Killed]:
        """Signal what is due; returns the processes killed in this step. A kill waits
        up to ``held_wait`` more seconds while the process holds unwritten finishes (not
        a fenced one's: they could not be written either)."""
        with self._lock:
            return self._step(kill_grace, held_wait)

    def _step(self, kill_grace: float, held_wait: float) -> list[Killed]:
        now = time.monotonic()
        killed = []
        for fence, stopping in list(self._pending.items()):
            if not _exists(stopping.pid):
                continue  # gone; its end is written by whoever sees that first
            current = running.running_now(stopping.pid) == (fence.task_id, fence.attempt)
            if stopping.terminated_at is None:
                if not current:  # it waits in its message: its grace has not begun
                    stopping.since = now
                elif now - stopping.since >= stopping.grace:
                    self._terminate(fence, stopping)
            elif stopping.killed_at is None and now - stopping.terminated_at >= (
                after := kill_grace if stopping.kill_grace is None else stopping.kill_grace
            ):
                wait = 0.0 if stopping.reason == FENCED else held_wait
                late = now - stopping.terminated_at >= after + wait
                if current and (late or not running.held_by(stopping.pid)):
                    killed.append(self._kill(fence, stopping))
                elif current:
                    continue  # its timer thread writes the finishes it holds first
                else:  # it ended after all (its end is written by its runner)
                    self._clear(fence)
        return [k for k in killed if k is not None]

    def _terminate(self, fence: Fence, stopping: _Stopping) -> None:
        path = _request_path(stopping.pid)
        if path is not None:
            kind = stopping.reason if stopping.reason in (INACTIVE, HARD_LIMIT, FENCED) else "stop"
            path.write_text(f"{fence.task_id} {fence.attempt} {kind}")
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

    def _kill(self, fence: Fence, stopping: _Stopping) -> Killed | None:
        # Read before the kill: Celery forgets the message once its process is gone.
        behind = self._behind(fence)
        try:
            family = [psutil.Process(stopping.pid)]
            family += family[0].children(recursive=True)
        except psutil.Error:
            return None
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
        gone = _wait_gone(stopping.pid, KILL_WAIT)
        if gone:
            running.forget(stopping.pid)
        return Killed(fence, stopping.pid, behind, gone=gone, reason=stopping.reason)

    def _clear(self, fence: Fence) -> None:
        _remove_request(self._pending.pop(fence).pid, fence)


#: Longest wait for a SIGKILLed process to be gone before the agent moves on.
KILL_WAIT = 2.0


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` is gone or a zombie (never reap it: the pool's own parent must
    see it die, or Celery would not learn that its message was lost)."""
    deadline = time.monotonic() + timeout
    while _exists(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _exists(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
