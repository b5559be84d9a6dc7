"""Test helpers for projects that submit batch tasks (``BatchTask.submit``,
``submit_many``, a ``django.tasks`` function's ``enqueue``).

* ``run_tasks()`` runs them in the test's process, through the steps a worker takes
  (claim, attempt row, plugin, outcome, retries, finalizers, refill), without Celery or a
  broker: at commit, and whatever is still due when ``run_due()`` is called or the block
  ends.
* ``capture_tasks()`` lists what was submitted and runs nothing.
* The pytest fixtures ``batchtasks_run`` and ``batchtasks_capture`` wrap them
  (``batchtasks.testing.pytest_plugin``, active through the ``pytest11`` entry point).

Nothing here touches Django until used: pytest loads the plugin before Django is set up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .capture import CapturedTasks, capture_tasks
    from .running import TaskRunner, run_tasks

__all__ = ["CapturedTasks", "TaskRunner", "capture_tasks", "run_tasks"]

_MODULES = {
    "CapturedTasks": "capture",
    "capture_tasks": "capture",
    "TaskRunner": "running",
    "run_tasks": "running",
}


def __getattr__(name: str) -> Any:
    # The helpers import the models, which need Django's apps to be ready.
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
