"""Submits inside the application's transaction, with a task database of its own.

With ``BATCHTASKS["DATABASE"]`` (and only then) the task tables live in another database than the
application's, and no single transaction spans both. A submit made while a transaction
of another database is open (``transaction.atomic()`` on "default") and none of the
task database is, does not insert at once: the task's id is taken from its sequence
(PostgreSQL), and the insert, in a transaction of its own, runs from that transaction's
``on_commit``. A rollback therefore leaves no task, and the id is known (and may be
stored in the application's rows) before the commit.

What remains: between the application's commit and the task's, a crash of the process
or an error of the task database loses the task (logged as ``batchtasks submit lost``).
Inside a transaction of the task database itself (``atomic(using="tasks")``) a submit
inserts in it, as on one database: it commits with that transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import connections, transaction

from ..core.conf import get_settings
from ..db.connections import LOCK_SUFFIX, SUFFIX
from ..models import BatchTask

logger = logging.getLogger(__name__)


def waiting_for(db: str) -> str | None:
    """The database alias whose open transaction a submit to ``db`` waits for: with a
    task database of its own, one of another database of this thread while ``db`` has
    none open; ``None``: insert now."""
    if get_settings().DATABASE is None or connections[db].in_atomic_block:
        return None
    for wrapper in connections.all(initialized_only=True):
        alias = wrapper.alias
        if alias == db or alias.endswith((SUFFIX, LOCK_SUFFIX)):
            continue  # the worker's own connections are never an application's
        if wrapper.in_atomic_block:
            return alias
    return None


def take_ids(count: int, db: str) -> list[int | None]:
    """``count`` task ids from the task table's sequence (PostgreSQL); ``None`` each
    elsewhere (the id is then known after the commit only)."""
    connection = connections[db]
    if connection.vendor != "postgresql":
        return [None] * count
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
            [BatchTask._meta.db_table, count],
        )
        return [row[0] for row in cursor.fetchall()]


def after_commit(app_db: str, db: str, insert: Callable[[], None], what: str) -> None:
    """Run ``insert`` once ``app_db``'s transaction commits (and any other it then finds
    open); nothing if it rolls back. An insert that fails then is logged, not raised:
    the application's data is committed already."""

    def run() -> None:
        later = waiting_for(db)
        if later is not None:
            transaction.on_commit(run, using=later)
            return
        try:
            insert()
        except Exception:
            logger.exception("batchtasks submit lost after commit db=%s %s", db, what)

    transaction.on_commit(run, using=app_db)
