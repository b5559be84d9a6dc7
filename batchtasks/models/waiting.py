"""Waiting for tasks to finish: polling the database with a growing pause."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from django.db import connections

from ..core.exceptions import BatchTasksError

FIRST_PAUSE = 0.05
LONGEST_PAUSE = 1.0


def _pauses(timeout: float | None) -> Callable[[], float | None]:
    """The next pause before looking again, or ``None`` once ``timeout`` has passed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = FIRST_PAUSE

    def next_pause() -> float | None:
        nonlocal pause
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return None
        this = pause if deadline is None else min(pause, deadline - now)
        pause = min(pause * 2, LONGEST_PAUSE)
        return this

    return next_pause


def refuse_in_transaction(using: str, what: str) -> None:
    """Waiting inside a transaction would wait forever: nothing is published before commit,
    and the transaction's snapshot may never show the outcome."""
    if connections[using].in_atomic_block:
        raise BatchTasksError(
            f"{what} cannot wait inside a transaction (atomic block on {using!r}): tasks are "
            "published when it commits. Wait after the block, or in a test run tasks with "
            "batchtasks.testing."
        )


def wait_until(done: Callable[[], bool], timeout: float | None, what: str) -> None:
    """Call ``done`` until it is true; ``TimeoutError`` after ``timeout`` seconds."""
    next_pause = _pauses(timeout)
    while not done():
        pause = next_pause()
        if pause is None:
            raise TimeoutError(f"{what} did not finish within {timeout} s.")
        time.sleep(pause)


async def await_until(
    done: Callable[[], Awaitable[bool]], timeout: float | None, what: str
) -> None:
    """``wait_until`` for async code: ``done`` is awaited, pauses do not block the loop."""
    next_pause = _pauses(timeout)
    while not await done():
        pause = next_pause()
        if pause is None:
            raise TimeoutError(f"{what} did not finish within {timeout} s.")
        await asyncio.sleep(pause)
