"""batchtasks: durable, visible and fair background batch tasks for Django on Celery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import signals
from .core.exceptions import (
    BatchTasksError,
    ConfigurationError,
    DuplicateTaskType,
    ExecutorFailed,
    FunctionModuleNotImported,
    InactivityTimeout,
    InvalidParameters,
    InvalidTaskOption,
    IsolatedRunFailed,
    PermanentFailure,
    ResultNotSerializable,
    ResultTooLarge,
    TaskCancelled,
    TaskSkipped,
    TaskStopped,
    TaskTypeDisabled,
    UniqueKeyConflict,
    UnknownTaskType,
)
from .core.finalizers import finalizer
from .core.params import param
from .core.plugin import BatchTaskPlugin, ExecutorPlugin, LocalContext
from .core.registry import batchtask
from .core.states import Priority, TaskState

if TYPE_CHECKING:
    from .models import BatchTask, GroupStatus, TaskGroup

__all__ = [
    "BatchTask",
    "BatchTaskPlugin",
    "BatchTasksError",
    "ConfigurationError",
    "DuplicateTaskType",
    "ExecutorFailed",
    "ExecutorPlugin",
    "FunctionModuleNotImported",
    "GroupStatus",
    "InactivityTimeout",
    "InvalidParameters",
    "InvalidTaskOption",
    "IsolatedRunFailed",
    "LocalContext",
    "PermanentFailure",
    "Priority",
    "ResultNotSerializable",
    "ResultTooLarge",
    "TaskCancelled",
    "TaskGroup",
    "TaskSkipped",
    "TaskState",
    "TaskStopped",
    "TaskTypeDisabled",
    "UniqueKeyConflict",
    "UnknownTaskType",
    "batchtask",
    "finalizer",
    "param",
    "signals",
]
__version__ = "0.1.0"

# The models can only be imported once Django's apps are ready.
_MODELS = ("BatchTask", "GroupStatus", "TaskGroup")


def __getattr__(name: str) -> Any:
    if name in _MODELS:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'batchtasks' has no attribute {name!r}")
