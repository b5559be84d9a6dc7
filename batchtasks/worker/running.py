"""Which attempt each pool process is running at this moment.

A message may hand a pool process several attempts, but it runs one at a time, and only
that one may be signalled: a stop meant for a task that waits behind it in the message
must never reach the task that runs (messages mix owners). So each pool process keeps a
small file of its own in the worker's stop folder (``<pid>.run``), mapped into memory:
it writes the attempt's ``(task id, attempt)`` when the plugin starts and zeroes when it
ends, a memory write rather than a system call, and the main process reads the file
before it signals that process.

The same slot carries what the agent needs to enforce an inline run's time limits
(``worker.timelimits``): when its plugin started, by ``CLOCK_MONOTONIC`` (one clock for
every process of the host), and its soft and hard limits; and how many successful
finishes of its message the process holds unwritten (``worker.completions``), which a
kill must wait for.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from ..transitions import Fence
from . import identity

#: task id, attempt, start (monotonic s), soft and hard limit (s, 0: none), held finishes.
_SLOT = struct.Struct("<qqdddq")
_HELD = struct.calcsize("<qqddd")
#: This process's mapped file, with the pid it belongs to (a fork must not share it).
_mapped: tuple[int, mmap.mmap] | None = None


class Slot(NamedTuple):
    """What a pool process runs now, as its slot says."""

    task_id: int
    attempt: int
    #: When the plugin started (``time.monotonic()``, the same clock in every process).
    started: float
    #: Its soft and hard time limits in seconds (0: none) if the agent enforces them.
    soft: float
    hard: float
    #: Successful finishes of its message held and not written yet.
    held: int


def set_running(
    fence: Fence | None, *, soft: float | None = None, hard: float | None = None
) -> None:
    """Note the attempt this pool process runs now (``None``: none), and the time
    limits the agent is to enforce on it, counted from now."""
    slot = _slot()
    if slot is None:
        return
    if fence is None:
        _SLOT.pack_into(slot, 0, 0, 0, 0.0, 0.0, 0.0, _read_held(slot))
    else:
        start, held = time.monotonic(), _read_held(slot)
        limits = (soft or 0.0, hard or 0.0)
        _SLOT.pack_into(slot, 0, fence.task_id, fence.attempt, start, *limits, held)


def set_held(count: int) -> None:
    """Note how many successful finishes this pool process holds unwritten."""
    slot = _slot()
    if slot is not None:
        struct.pack_into("<q", slot, _HELD, count)


def _read_held(slot: mmap.mmap) -> int:
    return int(struct.unpack_from("<q", slot, _HELD)[0])


def slot_of(pid: int) -> Slot | None:
    """What pool process ``pid`` runs now; ``None`` if it runs none (or never ran one).
    Read until two reads agree: a start may be half written."""
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
    slot = Slot(*_SLOT.unpack_from(last or b""))
    return slot if slot.task_id else None


def running_now(pid: int) -> tuple[int, int] | None:
    """``(task id, attempt)`` that pool process ``pid`` runs now; ``None`` if none."""
    slot = slot_of(pid)
    return None if slot is None else (slot.task_id, slot.attempt)


def held_by(pid: int) -> int:
    """Successful finishes pool process ``pid`` holds unwritten (0 if it cannot be read)."""
    path = _path(pid)
    try:
        data = path.read_bytes() if path is not None else b""
    except OSError:
        return 0
    return int(struct.unpack_from("<q", data, _HELD)[0]) if len(data) >= _SLOT.size else 0


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
