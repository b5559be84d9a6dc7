"""Processes of an isolated attempt that leave its process group (``setsid()``, a daemon's
double fork) still end with the attempt.

While an isolated attempt runs, the pool process is a *child subreaper* (Linux's
``prctl(PR_SET_CHILD_SUBREAPER)``): a process of the attempt whose parent exits is
re-parented to the pool process instead of to init, so it stays where the pool process
can find it. When the attempt ends, ``Orphans.kill`` SIGKILLs every child the pool process
gained during the attempt (with their descendants), reaps them, and the pool process
stops being a subreaper. Orphans that exit while the attempt runs are reaped at
the supervisor's next tick, so no zombie piles up in a pool process that runs many
attempts.

Only for the attempt: billiard's pool process starts no processes of its own and never
waits for any, so becoming a subreaper takes nothing from it; but the daemons of an inline
plugin must not become the pool process's zombies, and children it had before the attempt
(an inline plugin's, left running) are not the attempt's to kill, nor is a ``process``
type's template (``forkserver``), even one started during the attempt (``Orphans.keep``).
(A daemon such a child starts while the attempt runs is re-parented to the pool process
too, and killed with the attempt's.) The pool process's children are read from
``/proc/self/task/*/children`` (a scan of all of ``/proc``, about 2 ms among 120
processes, where the kernel lacks that file), only when it has any: before the attempt
(a template or a spare child is one), and after it if any is left.

Being the subreaper is also what makes a child forked by the template the pool
process's own: the template's middle process exits, and its child is re-parented here.

Elsewhere (macOS and the BSDs have no subreaper) an orphan goes to init as before, and
only the attempt's process group is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
#: Rounds of killing at most; each takes what the deaths of the last one re-parented.
KILL_ROUNDS = 20
#: Seconds to wait for killed processes to exit (one stuck in the kernel is left).
REAP_SECONDS = 1.0


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_prctl = _load_prctl()
#: Whether this platform has child subreapers (Linux).
SUPPORTED = _prctl is not None


def is_subreaper() -> bool:
    """Whether this process is a child subreaper now."""
    if _prctl is None:
        return False
    flag = ctypes.c_int(0)
    unused = ctypes.c_ulong(0)
    done = _prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), unused, unused, unused) == 0
    return done and bool(flag.value)


def set_subreaper(on: bool) -> bool:
    """Make this process a child subreaper, or stop; ``False`` where it cannot be one."""
    if _prctl is None:
        return False
    unused = ctypes.c_ulong(0)
    if _prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(int(on)), unused, unused, unused) != 0:
        logger.warning(
            "batchtasks cannot set the child subreaper flag error=%s",
            os.strerror(ctypes.get_errno()),
        )
        return False
    return True


def _started(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat`` field 22):
    with the pid, it names one process even after the pid is used again."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # After the command in parentheses (which may hold anything) come fields 3, 4, ...
    return int(stat.rpartition(b")")[2].split()[19])


def _child_pids() -> list[int]:
    """This process's children: from ``/proc/self/task/*/children`` (one small read per
    thread), else from a scan of ``/proc`` (psutil) where the kernel has no such file."""
    pids: list[int] = []
    try:
        for task in os.scandir("/proc/self/task"):
            pids += map(int, Path(task.path, "children").read_bytes().split())
    except OSError:
        return [child.pid for child in psutil.Process().children()]
    return pids


def _children() -> dict[int, int | None]:
    """This process's children (pid to start time)."""
    return {pid: _started(pid) for pid in _child_pids()}


def _has_children() -> bool:
    """Whether this process has any child, living or not yet reaped (no /proc scan)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


class Orphans:
    """The pool process as the subreaper of one attempt's processes (see the module text)."""

    def __init__(self) -> None:
        #: Whether it was one before the attempt (then it stays one).
        self._was = is_subreaper()
        self.active = self._was or set_subreaper(True)
        #: The children from before the attempt, which are not the attempt's.
        self.older = _children() if self.active and _has_children() else {}

    def reap_exited(self, attempt_pid: int) -> None:
        """Reap the orphans of the attempt that exited already (``attempt_pid``, the
        attempt's own process, stays for its supervisor to collect)."""
        while self.active:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == attempt_pid or not self._ours(info.si_pid):
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.si_pid, 0)

    def kill(self) -> int:
        """SIGKILL and reap what the attempt left behind, stop being the subreaper, and
        say how many processes were killed."""
        if not self.active:
            return 0
        killed = 0
        try:
            for _ in range(KILL_ROUNDS):
                strays = self._strays()
                if not strays:
                    return killed
                killed += _kill(strays)
            logger.warning("batchtasks processes left after killing rounds=%s", KILL_ROUNDS)
            return killed
        finally:
            self.active = False
            if not self._was:
                set_subreaper(False)

    def keep(self, pid: int) -> None:
        """``pid``, a child started during the attempt, is not the attempt's (a template)."""
        if self.active:
            self.older[pid] = _started(pid)

    def _ours(self, pid: int) -> bool:
        return pid not in self.older or self.older[pid] != _started(pid)

    def _strays(self) -> list[psutil.Process]:
        if not _has_children():  # the usual end: nothing escaped, no /proc scan
            return []
        strays = []
        for pid in _child_pids():
            if self._ours(pid):
                with contextlib.suppress(psutil.Error):
                    strays.append(psutil.Process(pid))
        return strays


def _kill(strays: list[psutil.Process]) -> int:
    """SIGKILL ``strays`` (children of this process) and their descendants, reap them."""
    family: list[Any] = list(strays)
    for stray in strays:
        with contextlib.suppress(psutil.Error):
            family += stray.children(recursive=True)
    for process in family:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(strays, timeout=REAP_SECONDS)
    return len(family)


@contextlib.contextmanager
def adopting() -> Iterator[Orphans]:
    """While the block runs an attempt, its orphans are this process's; at the end (if
    its supervisor did not already) they are killed and reaped."""
    orphans = Orphans()
    try:
        yield orphans
    finally:
        orphans.kill()
