"""The task a log record was written for: its id, type and attempt on every record.

The runner binds the running attempt with ``log_context(...)``; ``TaskLogFilter`` (put it
on a handler) copies it onto each record as ``task_id``, ``task_type`` and ``attempt``,
whatever logger wrote it: the plugin's own, Django's, a library's. A context variable
rather than a global: it holds for the code of the run and nothing else in the process.
Threads started by a plugin do not inherit it (run them with ``contextvars.copy_context``).

``TaskTextFormatter`` is the readable format with those fields appended when present;
for JSON lines use python-json-logger's ``JsonFormatter``, which writes them as keys.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class LogTask:
    """The attempt whose code is running."""

    task_id: int
    task_type: str
    attempt: int


_current: ContextVar[LogTask | None] = ContextVar("batchtasks_log_task", default=None)


@contextmanager
def log_context(task_id: int, task_type: str, attempt: int) -> Iterator[LogTask]:
    """Mark every record logged inside the block as written for this attempt."""
    bound = LogTask(task_id, task_type, attempt)
    token = _current.set(bound)
    try:
        yield bound
    finally:
        _current.reset(token)


def current_task() -> LogTask | None:
    """The attempt bound by the innermost ``log_context``, if any."""
    return _current.get()


class TaskLogFilter(logging.Filter):
    """Adds ``task_id``, ``task_type`` and ``attempt`` to records written inside a
    ``log_context``; filters nothing out. Fields the caller set (``extra=``) are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _current.get()
        if bound is not None:
            for name in ("task_id", "task_type", "attempt"):
                if not hasattr(record, name):
                    setattr(record, name, getattr(bound, name))
        return True


class TaskTextFormatter(logging.Formatter):
    """The usual one-line text, then ``task=<id> type=<name> attempt=<n>`` when the
    record was written for a task."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        task_id = getattr(record, "task_id", None)
        if task_id is None:
            return text
        task_type, attempt = getattr(record, "task_type", ""), getattr(record, "attempt", "")
        fields = f"task={task_id} type={task_type} attempt={attempt}"
        head, newline, rest = text.partition("\n")  # before a traceback, if any
        return f"{head} {fields}{newline}{rest}"
