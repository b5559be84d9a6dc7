"""Task states, the writes allowed between them, priorities and isolation levels: each
list defined once."""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

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
    #: Waiting for its parents (``depends_on``) to be final, before ``new``; never
    #: dispatched as such. Listed last: the lists of states people know keep their order.
    BLOCKED = "blocked", _("Waiting for its parents")

    @property
    def code(self) -> int:
        """SuperOffice's numeric BatchTaskState (clients test ``code in (4, 5)`` for done)."""
        return STATE_CODES[self]

    @property
    def is_final(self) -> bool:
        """Whether the task will not change state again without a retry."""
        return self in FINAL_STATES


class AttemptOutcome(models.TextChoices):
    """How one attempt (one run) of a task ended."""

    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")
    #: Its process or worker went away (killed, out of memory, host lost): not the task's fault.
    LOST = "lost", _("Lost (worker gone)")


# SuperOffice: New=1, Acquired=2, Started=3, Succeeded=4, Failed=5. Cancelled and
# skipped tasks are finished without success, so old clients see them as Failed.
STATE_CODES: dict[str, int] = {
    TaskState.NEW: 1,
    TaskState.BLOCKED: 1,
    TaskState.QUEUED: 2,
    TaskState.RUNNING: 3,
    TaskState.SUCCEEDED: 4,
    TaskState.FAILED: 5,
    TaskState.CANCELLED: 5,
    TaskState.SKIPPED: 5,
}

#: Waiting for a slot (``blocked`` tasks wait for their parents, not for a slot).
WAITING_STATES = (TaskState.NEW, TaskState.QUEUED)
IN_FLIGHT_STATES = (TaskState.QUEUED, TaskState.RUNNING)
UNFINISHED_STATES = (TaskState.BLOCKED, TaskState.NEW, TaskState.QUEUED, TaskState.RUNNING)
FINAL_STATES = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.SKIPPED)


class Write(NamedTuple):
    """A guarded write: the states a task must be in, and the states it may end in
    (empty: the write changes no state, only data of a task in ``sources``)."""

    sources: tuple[str, ...]
    targets: tuple[str, ...] = ()


#: Every write batchtasks makes to a task. ``transitions`` builds each ``WHERE state …``
#: from here and refuses to end anywhere else, so this table is the whole state machine.
WRITES: dict[str, Write] = {
    # dispatcher
    "admit": Write((TaskState.NEW,), (TaskState.QUEUED,)),
    "unqueue": Write((TaskState.QUEUED,), (TaskState.NEW,)),
    "republish": Write((TaskState.QUEUED,)),
    # a rate limit's deferral: a later run_after (its earliest start), not an attempt
    "defer": Write((TaskState.NEW,)),
    # priority aging (the sweeper): a due waiting task's priority raised by its wait
    "age": Write((TaskState.NEW,)),
    # worker
    "claim": Write((TaskState.QUEUED,), (TaskState.RUNNING,)),
    "progress": Write((TaskState.RUNNING,)),
    "renew_lease": Write((TaskState.RUNNING,)),
    # claimed with others in a message whose process was killed for another: never started
    "release": Write((TaskState.RUNNING,), (TaskState.NEW,)),
    # an attempt ends: an outcome, or back to new for the next attempt
    "end_attempt": Write(
        (TaskState.RUNNING,),
        (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.NEW),
    ),
    # dependencies: the last parent's final write makes a child due, or a parent that
    # did not succeed skips it (``on_parent_failure="skip"``)
    "count_down": Write((TaskState.BLOCKED,)),
    "unblock": Write((TaskState.BLOCKED,), (TaskState.NEW,)),
    "skip_blocked": Write((TaskState.BLOCKED,), (TaskState.SKIPPED,)),
    # users
    "cancel_waiting": Write((TaskState.BLOCKED, *WAITING_STATES), (TaskState.CANCELLED,)),
    "request_cancel": Write((TaskState.RUNNING,)),
    "skip": Write((TaskState.BLOCKED, *WAITING_STATES), (TaskState.SKIPPED,)),
    "retry": Write((TaskState.FAILED, TaskState.CANCELLED), (TaskState.NEW,)),
    "set_priority": Write((TaskState.NEW,)),
    # retention
    "delete": Write(FINAL_STATES),
}

#: Which state may follow which: derived from ``WRITES``.
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    state: frozenset(t for w in WRITES.values() if state in w.sources for t in w.targets)
    for state in TaskState.values
}


def sources_of(write: str) -> tuple[str, ...]:
    """The states a task must be in for ``write`` to apply."""
    return WRITES[write].sources


class FinalizeState(models.TextChoices):
    """Where a final task's finalizers (and its type's webhook) are."""

    NONE = "", _("Nothing to run")
    PENDING = "pending", _("Pending")
    DONE = "done", _("Done")
    #: Every retry failed; the last error is kept on the task.
    FAILED = "failed", _("Failed")


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
