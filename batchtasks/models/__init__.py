"""The canonical tables: queues, task definitions, tasks, their parameters and attempts,
and the workers that run them."""

from .definitions import BatchQueue, BatchTaskDefinition
from .records import BatchTaskAttempt, BatchTaskParameters
from .tasks import BatchTask, TaskError, TaskOperations, install_operations, operations
from .workers import BatchWorker, WorkerState

__all__ = [
    "BatchQueue",
    "BatchTask",
    "BatchTaskAttempt",
    "BatchTaskDefinition",
    "BatchTaskParameters",
    "BatchWorker",
    "TaskError",
    "TaskOperations",
    "WorkerState",
    "install_operations",
    "operations",
]
