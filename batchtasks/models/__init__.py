"""The canonical tables: queues, task definitions, tasks, their parameters, attempts and
earlier outcomes, the workers that run them, and users' API tokens."""

from .definitions import BatchQueue, BatchTaskDefinition, BatchTaskRateLimit
from .dependencies import BatchTaskDependency
from .groups import GroupStatus, TaskGroup
from .queries import BatchTaskQuerySet
from .records import BatchTaskAttempt, BatchTaskOutcome, BatchTaskParameters
from .schedules import (
    BatchTaskSchedule,
    BatchTaskScheduleTick,
    CatchUp,
    ScheduleSource,
    TickOutcome,
)
from .tasks import BatchTask, TaskError, TaskOperations, install_operations, operations
from .tokens import ApiToken, TokenScope
from .workers import BatchWorker, WorkerState

__all__ = [
    "ApiToken",
    "BatchQueue",
    "BatchTask",
    "BatchTaskAttempt",
    "BatchTaskDefinition",
    "BatchTaskDependency",
    "BatchTaskOutcome",
    "BatchTaskParameters",
    "BatchTaskQuerySet",
    "BatchTaskRateLimit",
    "BatchTaskSchedule",
    "BatchTaskScheduleTick",
    "BatchWorker",
    "CatchUp",
    "GroupStatus",
    "ScheduleSource",
    "TaskError",
    "TaskGroup",
    "TaskOperations",
    "TickOutcome",
    "TokenScope",
    "WorkerState",
    "install_operations",
    "operations",
]
