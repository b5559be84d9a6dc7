"""The ``django.tasks`` names Django's tests import, from Django 6 or the ``django_tasks``
backport (Django 5.2), whichever the backend uses."""

from __future__ import annotations

import importlib
import re
from typing import Any

import pytest

from batchtasks.backends.django_tasks import FRAMEWORK

_root: Any = importlib.import_module(FRAMEWORK)
_base: Any = importlib.import_module(f"{FRAMEWORK}.base")
_exceptions: Any = importlib.import_module(f"{FRAMEWORK}.exceptions")

DEFAULT_TASK_QUEUE_NAME: str = _root.DEFAULT_TASK_QUEUE_NAME
TaskResultStatus: Any = _root.TaskResultStatus
TaskContext: Any = _root.TaskContext
default_task_backend: Any = _root.default_task_backend
task_backends: Any = _root.task_backends
task: Any = _root.task
Task: Any = _base.Task
TASK_MAX_PRIORITY: int = _base.TASK_MAX_PRIORITY
TASK_MIN_PRIORITY: int = _base.TASK_MIN_PRIORITY
# Django 6 dropped the backport's "Error" suffixes.
InvalidTask: Any = getattr(_exceptions, "InvalidTask", None) or _exceptions.InvalidTaskError
InvalidTaskBackend: Any = (
    getattr(_exceptions, "InvalidTaskBackend", None) or _exceptions.InvalidTaskBackendError
)
TaskResultDoesNotExist: Any = _exceptions.TaskResultDoesNotExist
TaskResultMismatch: Any = _exceptions.TaskResultMismatch
#: The logger of the framework's own task logs ("django.tasks" or "django_tasks").
LOGGER = FRAMEWORK


def raises_message(exception: type[BaseException], message: str) -> Any:
    """Django's ``assertRaisesMessage``: ``message`` is a plain substring of the error."""
    return pytest.raises(exception, match=re.escape(message))
