"""Hot statements on the caller's own connection, prepared once per connection.

Django opens PostgreSQL connections with psycopg's automatic preparation off (and
client-side binding by default), so PostgreSQL plans every execution again. Planning
the submit's line query took 0.75 ms of its 0.85 ms (``pgbench -M simple`` against
``-M prepared``), a third of a whole submit. SQL ``PREPARE`` once per connection, then
``EXECUTE name(…)``, works whatever binding the connection uses and plans once.

Prepared statements belong to the server session: a PgBouncer in transaction mode
would hand them to another client. ``PREPARED_STATEMENTS = False`` turns this off.

``Kept`` runs one hot read (the indicator's unchanged poll: a request of one query) on a
driver cursor kept with its connection, outside Django's cursor wrapper.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any
from weakref import WeakKeyDictionary

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper

from ..core.conf import get_settings

#: The statements prepared on each open driver connection (a new connection has none).
_prepared: WeakKeyDictionary[Any, set[str]] = WeakKeyDictionary()
#: The kept cursor of each connection (Django's, per thread), on its driver connection.
_kept: WeakKeyDictionary[BaseDatabaseWrapper, Any] = WeakKeyDictionary()


def execute(cursor: CursorWrapper, name: str, sql: str, params: Sequence[Any]) -> None:
    """Run ``sql`` (``%s`` placeholders, ``%%`` for ``%``) with ``params`` on ``cursor``,
    as a statement prepared on its connection where that is possible."""
    connection = cursor.db
    if connection.vendor != "postgresql" or not get_settings().PREPARED_STATEMENTS:
        cursor.execute(sql, params)
        return
    name = prepared_name(name, sql)
    _prepare(cursor, connection.connection, name, sql)
    placeholders = ", ".join(["%s"] * len(params))
    cursor.execute(f"EXECUTE {name}({placeholders})" if params else f"EXECUTE {name}", params)


def prepared_name(name: str, sql: str) -> str:
    """The name ``sql`` is prepared under: the text is part of it, so that a changed
    statement is never run under an old name."""
    return f"batchtasks_{name}_{zlib.crc32(sql.encode()):08x}"


def _prepare(cursor: Any, driver: Any, name: str, sql: str) -> None:
    names = _prepared.setdefault(driver, set())
    if name not in names:
        # A prepared statement outlives a rolled-back transaction: PREPARE once is enough.
        cursor.execute(f"PREPARE {name} AS {numbered(sql)}")
        names.add(name)


class Kept:
    """One read (PostgreSQL), run as ``execute`` runs it, but on a client-binding driver
    cursor kept with its connection: a Django cursor per call cost a request whose work
    is this one query 60-70 us of CPU (its creation, its first result's type lookups, the
    wrapper), a third of the fast path's own. Django still decides the connection (health
    check, reconnect) and converts its errors; where something watches Django's cursors
    (``DEBUG``'s query log, ``assertNumQueries``, an execute wrapper) the query runs on one
    of them, unprepared, so that they still see it, as one query of its own text."""

    def __init__(self, name: str, sql: str) -> None:
        self.name, self.sql = prepared_name(name, sql), sql
        placeholders = ", ".join(["%s"] * sql.replace("%%", "").count("%s"))
        self.run_prepared = f"EXECUTE {self.name}({placeholders})"

    def fetchone(self, using: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
        """The first row of the statement's answer to ``params`` on ``using``."""
        connection = connections[using]
        if connection.queries_logged or connection.execute_wrappers:
            with connection.cursor() as cursor:
                cursor.execute(self.sql, params)
                return cursor.fetchone()
        connection.close_if_health_check_failed()  # as Django's own cursor() does
        connection.ensure_connection()
        connection.validate_thread_sharing()
        connection.validate_no_broken_transaction()
        with connection.wrap_database_errors:
            cursor = self._cursor(connection)
            if get_settings().PREPARED_STATEMENTS:
                _prepare(cursor, connection.connection, self.name, self.sql)
                cursor.execute(self.run_prepared, params)
            else:
                cursor.execute(self.sql, params)
            return cursor.fetchone()

    @staticmethod
    def _cursor(connection: BaseDatabaseWrapper) -> Any:
        """The connection's kept cursor; a new one once the driver connection changed."""
        from psycopg import ClientCursor

        cursor = _kept.get(connection)
        if cursor is None or cursor.connection is not connection.connection:
            cursor = _kept[connection] = ClientCursor(connection.connection)
        return cursor


def numbered(sql: str) -> str:
    """``sql`` with ``%s`` placeholders as ``$1``, ``$2``… and ``%%`` as ``%``."""
    parts = sql.split("%%")
    count = 0
    out = []
    for part in parts:
        pieces = part.split("%s")
        text = pieces[0]
        for piece in pieces[1:]:
            count += 1
            text += f"${count}{piece}"
        out.append(text)
    return "%".join(out)
