"""Which attempt each pool process is running at this moment.

A message may hand a pool process several attempts, but it runs one at a time, and only
that one may be signalled: a stop meant for a task that waits behind it in the message
must never reach the task that runs (messages mix owners). So each pool process keeps a
16-byte file of its own in the worker's stop folder (``<pid>.run``), mapped into memory:
it writes the attempt's ``(task id, attempt)`` when the plugin starts and zeroes when it
ends, a memory write rather than a system call, and the main process reads the file
before it signals that process.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Callable
from pathlib import Path

from ..transitions import Fence
from . import identity

_SLOT = struct.Struct("<qq")
#: This process's mapped file, with the pid it belongs to (a fork must not share it).
_mapped: tuple[int, mmap.mmap] | None = None


def set_running(fence: Fence | None) -> None:
    """Note the attempt this pool process runs now (``None``: none)."""
    slot = _slot()
    if slot is not None:
        _SLOT.pack_into(slot, 0, *((fence.task_id, fence.attempt) if fence else (0, 0)))


def running_now(pid: int) -> tuple[int, int] | None:
    """``(task id, attempt)`` that pool process ``pid`` runs now; ``None`` if it runs
    none (or never ran one). Read until two reads agree: a start may be half written."""
    path = _path(pid)
    if path is None:
        return None
    last = None
    for _ in range(5):
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if len(data) < _SLOT.size:
            return None
        if data == last:
            break
        last = data
    task_id, attempt = _SLOT.unpack_from(last or b"")
    return (task_id, attempt) if task_id else None


def forget(pid: int) -> None:
    """Remove the file of pool process ``pid``, which is gone (main process)."""
    path = _path(pid)
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def prune(alive: Callable[[int], bool]) -> None:
    """Remove the files of pool processes that are gone (main process, now and then)."""
    folder = identity.stop_dir()
    if not folder:
        return
    for path in Path(folder).glob("*.run"):
        if path.stem.isdigit() and not alive(int(path.stem)):
            with contextlib.suppress(OSError):
                path.unlink()


def _path(pid: int) -> Path | None:
    folder = identity.stop_dir()
    return Path(folder, f"{pid}.run") if folder else None


def _slot() -> mmap.mmap | None:
    global _mapped
    pid = os.getpid()
    if _mapped is not None and _mapped[0] == pid:
        return _mapped[1]
    path = _path(pid)
    if path is None:
        return None
    # Truncated first: a file left by an earlier process with this pid names its attempt.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, _SLOT.size)
        _mapped = (pid, mmap.mmap(fd, _SLOT.size))
    finally:
        os.close(fd)
    return _mapped[1]
