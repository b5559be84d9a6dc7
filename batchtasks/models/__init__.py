"""The canonical tables: queues, task definitions, tasks, their parameters and attempts,
and the workers that run them."""

from .definitions import BatchQueue, BatchTaskDefinition
from .groups import GroupStatus, TaskGroup
from .queries import BatchTaskQuerySet
from .records import BatchTaskAttempt, BatchTaskParameters
from .tasks import BatchTask, TaskError, TaskOperations, install_operations, operations
from .workers import BatchWorker, WorkerState

__all__ = [
    "BatchQueue",
    "BatchTask",
    "BatchTaskAttempt",
    "BatchTaskDefinition",
    "BatchTaskParameters",
    "BatchTaskQuerySet",
    "BatchWorker",
    "GroupStatus",
    "TaskError",
    "TaskGroup",
    "TaskOperations",
    "WorkerState",
    "install_operations",
    "operations",
]
