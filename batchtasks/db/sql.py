"""Small helpers for the hand-written SQL of the hot paths: table names, state lists and
the database's clock.

Every time batchtasks writes (leases, ``run_after``, queued/started/finished) comes from
the database server's clock, never from a host's: hosts whose clocks disagree then
cannot expire each other's leases or run a delayed task early.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from ..core.states import TaskState
from ..models import (
    BatchQueue,
    BatchTask,
    BatchTaskAttempt,
    BatchTaskDefinition,
    BatchTaskDependency,
    BatchTaskOutcome,
    BatchTaskParameters,
    BatchWorker,
)


class Tables:
    """Quoted table names for one connection."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        quote = connection.ops.quote_name
        self.task = quote(BatchTask._meta.db_table)
        self.params = quote(BatchTaskParameters._meta.db_table)
        self.attempt = quote(BatchTaskAttempt._meta.db_table)
        self.outcome = quote(BatchTaskOutcome._meta.db_table)
        self.definition = quote(BatchTaskDefinition._meta.db_table)
        self.dependency = quote(BatchTaskDependency._meta.db_table)
        self.queue = quote(BatchQueue._meta.db_table)
        self.worker = quote(BatchWorker._meta.db_table)


def states_sql(*states: str) -> str:
    """States as SQL literals, for ``state IN (…)``.

    Literals, not parameters: a prepared statement's generic plan can then still prove
    the ``WHERE state …`` predicates of the partial indexes and use them.
    """
    assert states and all(s.isalpha() and s in TaskState.values for s in states)
    return ", ".join(f"'{s}'" for s in states)


def notice_channel(instance: str) -> str:
    """The PostgreSQL channel worker instance ``instance`` listens on (``LISTEN``) for
    news of the attempts it runs (``worker.notices``)."""
    return f"batchtasks_{instance}"


def notice_channel_sql(instance_column: str) -> str:
    """``notice_channel`` of the instance in ``instance_column``, as SQL (PostgreSQL)."""
    return f"'batchtasks_' || {instance_column}"


def attempts_in(runs: list[tuple[int, int]]) -> tuple[str, list[int]]:
    """``(id, attempt) IN (…)`` for these ``(task id, attempt)`` pairs, and its values."""
    pairs = ", ".join(["(%s, %s)"] * len(runs))
    return f"(id, attempt) IN ({pairs})", [value for pair in runs for value in pair]


class Clock:
    """The database's clock as SQL expressions (``%s`` placeholders take seconds).

    PostgreSQL: ``STATEMENT_TIMESTAMP()``, as Django's ``Now()``. SQLite: the text
    timestamps Django stores there, from SQLite's own clock.
    """

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        self.postgresql = connection.vendor == "postgresql"

    @property
    def now(self) -> str:
        """The current time."""
        if self.postgresql:
            return "STATEMENT_TIMESTAMP()"
        return "STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'now')"

    @property
    def after(self) -> str:
        """The time ``%s`` seconds from now (one placeholder)."""
        if self.postgresql:
            return "(STATEMENT_TIMESTAMP() + MAKE_INTERVAL(secs => %s))"
        return "STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'now', %s || ' seconds')"

    def seconds_until(self, column: str) -> str:
        """Seconds from now until ``column`` (negative when past)."""
        if self.postgresql:
            return f"EXTRACT(EPOCH FROM ({column} - STATEMENT_TIMESTAMP()))"
        return f"((JULIANDAY({column}) - JULIANDAY('now')) * 86400.0)"

    def seconds_since(self, column: str) -> str:
        """Seconds from ``column`` until now."""
        if self.postgresql:
            return f"EXTRACT(EPOCH FROM (STATEMENT_TIMESTAMP() - {column}))"
        return f"((JULIANDAY('now') - JULIANDAY({column})) * 86400.0)"

    def param(self, seconds: float) -> Any:
        """``seconds`` as the backend's ``after`` placeholder wants it."""
        return float(seconds) if self.postgresql else f"{float(seconds):+.6f}"


def database_now(using: str) -> datetime:
    """The database server's clock, now."""
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {Clock(connection).now}", [])  # with parameters, "%%" is "%"
        now = as_datetime(cursor.fetchone()[0])
    assert now is not None
    return now


def as_datetime(value: Any) -> datetime | None:
    """A timestamp read by raw SQL as an aware datetime (SQLite returns text in UTC)."""
    if value is None or isinstance(value, datetime):
        return value
    parsed = parse_datetime(str(value))
    if parsed is not None and timezone.is_naive(parsed):
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def db_datetime(connection: BaseDatabaseWrapper, value: datetime | None) -> Any:
    """A datetime as the backend stores it (SQLite keeps text)."""
    return connection.ops.adapt_datetimefield_value(value)


def param_type(field: Any, connection: BaseDatabaseWrapper) -> str:
    """The type a column's parameter is cast to where PostgreSQL cannot infer it from the
    column (a prepared ``SELECT``, an ``INSERT … SELECT``), and would take text. Text for
    text columns: assigning it checks the length (a cast to ``varchar(n)`` would cut the
    value silently)."""
    db_type = str(field.db_type(connection))
    return "text" if db_type.startswith("varchar") else db_type
