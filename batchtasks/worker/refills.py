"""Refills of the slots a pool process frees, left to its worker's agent.

A finish of a limited type or queue refills at once, in the pool process: its slot is
free and the next task of that limit may be waiting for it. An unlimited queue is
refilled at most every ``REFILL_INTERVAL`` (``services.dispatch.refill``); such a pass
is left to the worker's agent, off the pool process's path from one task to the next
(a pass is several statements and a publish; a task of its own cost, for tiny tasks):
the pool process tells its agent over a pipe the worker opens before its pool starts
(once per interval), and the agent runs a pass for that queue once ``REFILL_INTERVAL``
has passed, one pass for all its pool processes. Nothing else may be left to wait for:
a small window of tiny tasks can empty within the interval, and its backlog would then
wait for the agent's periodic pass (``DISPATCH_INTERVAL``, a second by default).

Outside a worker (no pipe) the pool process refills itself, at most every interval; a
skipped refill is left to the next pass.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from ..core.conf import get_settings
from ..db.connections import state_lock
from ..services import dispatch

#: The read and write ends of the worker's pipe, inherited by its pool processes.
_pipe: tuple[int, int] | None = None
#: When this process last told the agent about each queue.
_told: dict[str, float] = {}


def open_channel() -> None:
    """Open the pipe, in the worker's main process before its pool processes start."""
    global _pipe
    if _pipe is None:
        read, write = os.pipe()
        os.set_blocking(write, False)  # a full pipe drops a note; never stalls a run
        _pipe = (read, write)


def refill(queue: str, *, limited: bool, using: str) -> None:
    """Refill ``queue`` after a run: a limited one at once (``services.dispatch.refill``),
    an unlimited one by the agent once the interval is over (see the module text)."""
    to_agent = not limited and _pipe is not None
    if to_agent:
        owe(queue)
        return
    with state_lock:  # a transaction on the state connection the timer thread shares
        refilled = dispatch.refill(queue, limited=limited, using=using)
    if not refilled:
        owe(queue)


def owe(queue: str) -> None:
    """Tell the agent a pass of ``queue`` is owed (once per ``REFILL_INTERVAL``)."""
    if _pipe is None:
        return
    now = time.monotonic()
    if now - _told.get(queue, -1e9) < get_settings().REFILL_INTERVAL:
        return  # the pass it asked for is still to come, and sees this run's slot too
    _told[queue] = now
    try:
        os.write(_pipe[1], f"{queue}\n".encode())
    except OSError:  # full (the agent is behind) or closed: the periodic pass comes
        _told.pop(queue, None)


def owed() -> Iterator[str]:
    """The queues the pool processes name, as they do: for the agent's reader thread (a
    daemon: it ends with the worker, as the pool processes hold the pipe open)."""
    if _pipe is None:
        return
    buffered = b""
    while True:
        try:
            chunk = os.read(_pipe[0], 4096)
        except OSError:
            return
        if not chunk:
            return
        *lines, buffered = (buffered + chunk).split(b"\n")
        for line in lines:
            if line:
                yield line.decode()
