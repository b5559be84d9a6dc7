"""Small helpers for the hand-written SQL of the hot paths."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper

from .models import (
    BatchQueue,
    BatchTask,
    BatchTaskAttempt,
    BatchTaskDefinition,
    BatchTaskParameters,
)
from .states import TaskState


class Tables:
    """Quoted table names for one connection."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        quote = connection.ops.quote_name
        self.task = quote(BatchTask._meta.db_table)
        self.params = quote(BatchTaskParameters._meta.db_table)
        self.attempt = quote(BatchTaskAttempt._meta.db_table)
        self.definition = quote(BatchTaskDefinition._meta.db_table)
        self.queue = quote(BatchQueue._meta.db_table)


def states_sql(*states: str) -> str:
    """States as SQL literals, for ``state IN (…)``.

    Literals, not parameters: a prepared statement's generic plan can then still prove
    the ``WHERE state …`` predicates of the partial indexes and use them.
    """
    assert all(s.isalpha() and s in TaskState.values for s in states)
    return ", ".join(f"'{s}'" for s in states)


def db_datetime(connection: BaseDatabaseWrapper, value: datetime | None) -> Any:
    """A datetime as the backend stores it (SQLite keeps text)."""
    return connection.ops.adapt_datetimefield_value(value)
