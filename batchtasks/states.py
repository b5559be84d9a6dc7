"""Task states, priorities and isolation levels: each list defined once."""

from __future__ import annotations

from enum import IntEnum

from django.db import models
from django.utils.translation import gettext_lazy as _


class TaskState(models.TextChoices):
    """Where a batch task is in its life."""

    NEW = "new", _("New")
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")
    SKIPPED = "skipped", _("Skipped")

    @property
    def code(self) -> int:
        """SuperOffice's numeric BatchTaskState (clients test ``code in (4, 5)`` for done)."""
        return STATE_CODES[self]

    @property
    def is_final(self) -> bool:
        """Whether the task will not change state again without a retry."""
        return self in FINAL_STATES


# SuperOffice: New=1, Acquired=2, Started=3, Succeeded=4, Failed=5. Cancelled and
# skipped tasks are finished without success, so old clients see them as Failed.
STATE_CODES: dict[str, int] = {
    TaskState.NEW: 1,
    TaskState.QUEUED: 2,
    TaskState.RUNNING: 3,
    TaskState.SUCCEEDED: 4,
    TaskState.FAILED: 5,
    TaskState.CANCELLED: 5,
    TaskState.SKIPPED: 5,
}

WAITING_STATES = (TaskState.NEW, TaskState.QUEUED)
IN_FLIGHT_STATES = (TaskState.QUEUED, TaskState.RUNNING)
UNFINISHED_STATES = (TaskState.NEW, TaskState.QUEUED, TaskState.RUNNING)
FINAL_STATES = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.SKIPPED)

#: Every state change batchtasks makes; ``transitions`` refuses anything else.
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    TaskState.NEW: frozenset({TaskState.QUEUED, TaskState.CANCELLED, TaskState.SKIPPED}),
    TaskState.QUEUED: frozenset(
        {TaskState.RUNNING, TaskState.NEW, TaskState.CANCELLED, TaskState.SKIPPED}
    ),
    TaskState.RUNNING: frozenset(
        {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.NEW}
    ),
    TaskState.SUCCEEDED: frozenset(),
    TaskState.FAILED: frozenset({TaskState.NEW}),
    TaskState.CANCELLED: frozenset({TaskState.NEW}),
    TaskState.SKIPPED: frozenset(),
}


def sources_of(target: str) -> tuple[str, ...]:
    """The states from which ``target`` may be entered."""
    return tuple(sorted(s for s, targets in ALLOWED_TRANSITIONS.items() if target in targets))


class Priority(IntEnum):
    """Named priorities; any integer from ``MIN`` to ``MAX`` is allowed, higher runs first."""

    UNIMPORTANT = -50
    NORMAL = 0
    IMPORTANT = 50
    IMMEDIATE = 100


PRIORITY_MIN = -100
PRIORITY_MAX = 100


class Isolation(models.TextChoices):
    """Where a plugin's code runs (Tridion's isolationLevel)."""

    INLINE = "inline", _("In the worker's pool process")
    PROCESS = "process", _("In a fresh child process")
    EXECUTOR = "executor", _("As an external command")
