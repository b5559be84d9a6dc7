"""One cursor kept per state connection for the statements of every task's path.

Django builds a cursor per ``connection.cursor()``: its own wrapper and psycopg's cursor
with its adapters. For the claim that took as much of a pool process's CPU as running
the statement (py-spy, one task per message: 12.6 % of the pool process's Python
samples against 13.6 % for the execute). The claim runs once per message on the same
connection, so one cursor serves them all until the connection is replaced.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper

#: The attribute of a connection (Django's wrapper, one per thread) that keeps its cursor,
#: with the driver connection the cursor belongs to.
KEPT = "_batchtasks_kept_cursor"


def kept_cursor(connection: BaseDatabaseWrapper) -> CursorWrapper:
    """A cursor of ``connection`` to run statements on and read, never to close; a new one
    (kept from then on) whenever Django would do more than hand out a cursor: a closed or
    replaced connection, a health check due, queries logged (``DEBUG``)."""
    kept: tuple[Any, CursorWrapper] | None = getattr(connection, KEPT, None)
    driver = connection.connection
    if (
        kept is not None
        and kept[0] is driver
        and driver is not None
        and not connection.queries_logged
        and not _health_check_due(connection)
        and not kept[1].cursor.closed
    ):
        return kept[1]
    cursor = connection.cursor()
    if not connection.queries_logged:
        setattr(connection, KEPT, (connection.connection, cursor))
    return cursor


def _health_check_due(connection: BaseDatabaseWrapper) -> bool:
    """Whether Django would check the connection before handing out a cursor
    (``CONN_HEALTH_CHECKS``; not in django-stubs)."""
    enabled = getattr(connection, "health_check_enabled", False)
    return bool(enabled and not getattr(connection, "health_check_done", False))
