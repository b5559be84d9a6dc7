"""batchtasks: durable, visible and fair background batch tasks for Django on Celery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .core.finalizers import finalizer
from .core.plugin import BatchTaskPlugin, ExecutorPlugin
from .core.registry import batchtask
from .core.states import Priority, TaskState

if TYPE_CHECKING:
    from .models import BatchTask

__all__ = [
    "BatchTask",
    "BatchTaskPlugin",
    "ExecutorPlugin",
    "Priority",
    "TaskState",
    "batchtask",
    "finalizer",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The model can only be imported once Django's apps are ready.
    if name == "BatchTask":
        from .models import BatchTask

        return BatchTask
    raise AttributeError(f"module 'batchtasks' has no attribute {name!r}")
