"""Every write to a batch task, each a guarded conditional update that reports what it did.

A write takes the states it may leave from ``core.states.WRITES`` (the one table of the
state machine) for its ``WHERE`` clause, so stale or duplicate messages and signals can
never move a task backwards or finish it twice. A worker's writes are also fenced by
(task, attempt, worker instance). Nothing here dispatches or publishes: callers act on
the facts returned. Work that runs once per task (claim, progress, end) is one
statement each.
"""

from .attempts import (
    Claim,
    Ended,
    Fence,
    Outcome,
    Renewed,
    claim,
    claim_many,
    end_attempt,
    record_progress,
    release,
    renew_leases,
)
from .completions import Succeeded, end_succeeded, record_run_seconds
from .dependents import Settled, cancel_descendants, link, settle
from .dispatching import (
    admit,
    age_priorities,
    defer,
    lock_rate_keys,
    mark_republished,
    record_rate_starts,
    still_queued,
    unqueue,
)
from .finalizing import (
    FinalizeRun,
    claim_finalization,
    due_finalizations,
    record_finalize_error,
    record_finalized,
)
from .requests import (
    Cancelled,
    cancel,
    delete_expired,
    delete_tasks,
    retry,
    set_priority,
    skip_waiting,
)

__all__ = [
    "Cancelled",
    "Claim",
    "Ended",
    "Fence",
    "FinalizeRun",
    "Outcome",
    "Renewed",
    "Settled",
    "Succeeded",
    "admit",
    "age_priorities",
    "cancel",
    "cancel_descendants",
    "claim",
    "claim_finalization",
    "claim_many",
    "defer",
    "delete_expired",
    "delete_tasks",
    "due_finalizations",
    "end_attempt",
    "end_succeeded",
    "link",
    "lock_rate_keys",
    "mark_republished",
    "record_finalize_error",
    "record_finalized",
    "record_progress",
    "record_rate_starts",
    "record_run_seconds",
    "release",
    "renew_leases",
    "retry",
    "set_priority",
    "settle",
    "skip_waiting",
    "still_queued",
    "unqueue",
]
