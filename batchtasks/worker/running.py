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
every process of the host), and its soft and hard limits; how many successful
finishes of its message the process holds unwritten (``worker.completions``), which a
kill must wait for; and when the claim of its message was sent, from which its lease
lasts at least ``LEASE_SECONDS`` (``worker.fencing``).

One more file, ``leases``, is the agent's: the moment (``CLOCK_MONOTONIC``) until which
the last renewal it saw answered holds this worker's leases. Pool processes read it
before they start the next run of a message (``worker.fencing``).
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

#: task id, attempt, start (monotonic s), soft and hard limit (s, 0: none), held
#: finishes, claim sent (monotonic s).
_SLOT = struct.Struct("<qqdddqd")
_HELD = struct.calcsize("<qqddd")
#: This process's mapped file, with the pid it belongs to (a fork must not share it).
_mapped: tuple[int, mmap.mmap] | None = None
#: When this process sent the claim of the message it runs (monotonic s).
_claimed = 0.0
#: The agent's ``leases`` file (either side), with the pid that mapped it.
_HORIZON = struct.Struct("<d")
_horizon_map: tuple[int, mmap.mmap] | None = None


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
    #: When the claim of its message was sent (``time.monotonic()``).
    claimed: float


def set_running(
    fence: Fence | None, *, soft: float | None = None, hard: float | None = None
) -> None:
    """Note the attempt this pool process runs now (``None``: none), and the time
    limits the agent is to enforce on it, counted from now."""
    slot = _slot()
    if slot is None:
        return
    if fence is None:
        _SLOT.pack_into(slot, 0, 0, 0, 0.0, 0.0, 0.0, _read_held(slot), 0.0)
    else:
        start, held = time.monotonic(), _read_held(slot)
        limits = (soft or 0.0, hard or 0.0)
        _SLOT.pack_into(slot, 0, fence.task_id, fence.attempt, start, *limits, held, _claimed)


def set_message(runs: list[tuple[int, int]]) -> None:
    """Note the runs of the message of several runs this pool process takes now, in the
    order it runs them (``<pid>.msg``): if the process dies, those behind the one its
    slot names never started (``runs_behind``)."""
    folder = identity.stop_dir()
    if not folder:
        return
    text = " ".join(f"{task_id}:{attempt}" for task_id, attempt in runs)
    with contextlib.suppress(OSError):
        Path(folder, f"{os.getpid()}.msg").write_text(text)


def _message_of(pid: int) -> list[tuple[int, int]]:
    folder = identity.stop_dir()
    try:
        text = Path(folder, f"{pid}.msg").read_text() if folder else ""
    except OSError:
        return []
    runs = []
    for item in text.split():
        task_id, _, attempt = item.partition(":")
        if task_id.isdigit() and attempt.isdigit():
            runs.append((int(task_id), int(attempt)))
    return runs


def runs_behind(pid: int) -> list[tuple[int, int]]:
    """The runs of pool process ``pid``'s last message of several runs that it had not
    started when last seen (main process): those behind the run its slot named. None
    if either note is missing or they do not agree."""
    slot = last_slot(pid)
    runs = _message_of(pid) or _last_message.get(pid, [])
    if slot is None or (slot.task_id, slot.attempt) not in runs:
        return []
    return runs[runs.index((slot.task_id, slot.attempt)) + 1 :]


def note_claim(sent: float) -> None:
    """This process sent the claim of its next message at ``sent`` (monotonic s)."""
    global _claimed
    _claimed = sent


def claimed() -> float:
    """When this process sent the claim of the message it runs (monotonic s)."""
    return _claimed


def set_horizon(until: float) -> None:
    """The agent saw its renewal answered: this worker's leases hold until ``until``
    (monotonic s) at least."""
    mapped = _horizon(create=True)
    if mapped is not None:
        _HORIZON.pack_into(mapped, 0, until)


def horizon() -> float:
    """Until when the agent's last answered renewal holds this worker's leases
    (monotonic s; 0.0 if none was seen or the file cannot be read)."""
    mapped = _horizon(create=False)
    return float(_HORIZON.unpack_from(mapped)[0]) if mapped is not None else 0.0


def _horizon(*, create: bool) -> mmap.mmap | None:
    global _horizon_map
    pid = os.getpid()
    if _horizon_map is not None and _horizon_map[0] == pid:
        return _horizon_map[1]
    folder = identity.stop_dir()
    if not folder:
        return None
    path = Path(folder, "leases")
    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
    except OSError:
        return None
    try:
        if create:
            os.ftruncate(fd, _HORIZON.size)
        elif os.fstat(fd).st_size < _HORIZON.size:
            return None
        _horizon_map = (pid, mmap.mmap(fd, _HORIZON.size))
    finally:
        os.close(fd)
    return _horizon_map[1]


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


#: The last slots of pool processes whose files were removed (main process): what a
#: process that died was running, for Celery's word of its death, which may come later.
_last: dict[int, Slot] = {}
_last_message: dict[int, list[tuple[int, int]]] = {}
_LAST_KEPT = 64


def forget(pid: int) -> None:
    """Remove the file of pool process ``pid``, which is gone (main process)."""
    path = _path(pid)
    if path is not None:
        slot, message = slot_of(pid), _message_of(pid)
        if slot is not None:
            _last[pid] = slot
            _last_message[pid] = message
            while len(_last) > _LAST_KEPT:
                oldest = next(iter(_last))
                del _last[oldest]
                _last_message.pop(oldest, None)
        with contextlib.suppress(OSError):
            path.unlink()
        with contextlib.suppress(OSError):
            path.with_suffix(".msg").unlink()


def last_slot(pid: int) -> Slot | None:
    """What pool process ``pid`` ran when it was last seen, gone or not (main process)."""
    slot = slot_of(pid)
    return slot if slot is not None else _last.get(pid)


def prune(alive: Callable[[int], bool]) -> None:
    """Remove the files of pool processes that are gone (main process, now and then)."""
    folder = identity.stop_dir()
    if not folder:
        return
    for path in Path(folder).glob("*.run"):
        if path.stem.isdigit() and not alive(int(path.stem)):
            forget(int(path.stem))


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
