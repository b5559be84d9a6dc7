"""The one rule for names of task types and queues, used by ``@batchtask``, the settings
and the model fields (so the admin refuses what code may not declare)."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError

#: Letters, digits and ``. _ : -``, not starting with ``. : -``, at most 200 characters.
#: Nothing a shell, a YAML file or Celery's comma-separated ``-Q`` would read differently.
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,199}")
#: The rule in words, for error messages.
NAME_RULE = "letters, digits and . _ : - (not starting with . : or -; at most 200 characters)"


def is_name(value: object) -> bool:
    """Whether ``value`` is a valid task type or queue name."""
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None


def queue_name_problem(value: object) -> str | None:
    """Why ``value`` is not a valid queue name, or ``None`` if it is one."""
    if is_name(value):
        return None
    return f"The queue name {value!r} must be {NAME_RULE}, for example 'batch.reports'."


def validate_queue_name(value: object) -> None:
    """Django validator of ``BatchQueue.name`` and ``BatchTaskDefinition.queue``."""
    problem = queue_name_problem(value)
    if problem is not None:
        raise ValidationError(problem, code="invalid_queue_name")
