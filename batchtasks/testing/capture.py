"""``capture_tasks()``: what was submitted, with nothing run and nothing sent to a broker."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django.db import router

from ..models import BatchTask
from ..transport.publish import Run, redirected
from .submitted import Submitted, TaskList


class CapturedTasks(TaskList):
    """The tasks submitted inside ``capture_tasks()`` (rows as they are now), and the run
    messages that would have gone to the broker: ``(queue, run)`` in publish order."""

    def __init__(self, using: str) -> None:
        self._submitted = Submitted(using)
        self.runs: list[tuple[str, Run]] = []

    @property
    def tasks(self) -> list[BatchTask]:
        """The submitted tasks, oldest first; they stay ``new`` or ``queued``."""
        return self._submitted.tasks()

    def close(self) -> None:
        """Count no task submitted from now on."""
        self._submitted.close()

    def hold(self, queue: str, runs: list[Run]) -> None:
        """``publish``'s receiver: keep the runs instead of sending them."""
        self.runs.extend((queue, run) for run in runs)


@contextlib.contextmanager
def capture_tasks(*, using: str | None = None) -> Iterator[CapturedTasks]:
    """Capture the batch tasks submitted inside the block without running them: their
    rows are saved as usual (``new``, or ``queued`` once dispatched) and no message
    reaches the broker."""
    captured = CapturedTasks(using or router.db_for_write(BatchTask))
    try:
        with redirected(captured.hold):
            yield captured
    finally:
        captured.close()
