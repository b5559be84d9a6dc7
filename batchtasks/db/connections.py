"""The worker's own database connection for task state (claim, progress, finish, refill).

In worker processes it is a second connection beside the one plugin code uses, so that
progress and the outcome are written and seen at once even while a plugin holds a
transaction open, and so that it can be tuned for many tiny statements: on PostgreSQL
server-side binding with prepared statements, READ COMMITTED (the dispatcher's
lock-then-count needs it) and, unless ``SYNCHRONOUS_COMMIT``, commits that do not wait
for the WAL flush. A PostgreSQL crash can then lose the last fraction of a second of
worker state changes: the tasks concerned run again (at least once), and submits, which
use the caller's connection, are never affected.

Elsewhere (web requests, shells, commands) nothing opens a second connection: the
caller's own is used, so a web process holds no extra connection per thread.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import InterfaceError, OperationalError, connections
from django.utils.connection import ConnectionDoesNotExist

from ..core.conf import get_settings

logger = logging.getLogger(__name__)
T = TypeVar("T")
SUFFIX = ":batchtasks"
_registered: set[str] = set()
_dedicated = False


def use_dedicated_connections(enabled: bool = True) -> None:
    """Give this process (and the processes it forks) a state connection of its own per
    database; worker processes do, at start."""
    global _dedicated
    _dedicated = enabled


def state_db(using: str) -> str:
    """The alias of this thread's state connection to database ``using``: a dedicated,
    tuned connection in worker processes, ``using`` itself elsewhere."""
    if using.endswith(SUFFIX) or not _dedicated:
        return using
    alias = using + SUFFIX
    try:
        wrapper = connections[alias]
    except ConnectionDoesNotExist:
        base = connections[using]
        if base.vendor == "sqlite" and getattr(base, "is_in_memory_db", bool)():
            return using  # a second connection would see another, empty database
        wrapper = base.copy(alias)
        # Persistent whatever CONN_MAX_AGE says (Django's default of 0 would mean a new
        # connection per task); a failed connection is still replaced, below.
        wrapper.settings_dict["CONN_MAX_AGE"] = None
        if wrapper.vendor == "postgresql":
            _tune_postgresql(wrapper.settings_dict)
        connections[alias] = wrapper
        _registered.add(alias)
    else:
        # Nothing closes this connection at the end of a request or task: drop it here
        # once it has failed (a restarted server) or outlived CONN_MAX_AGE.
        if not wrapper.in_atomic_block:
            wrapper.close_if_unusable_or_obsolete()
    return alias


def reconnecting(action: Callable[[], T], using: str, *, patience: float = 0.0) -> T:
    """Run ``action`` (guarded writes, or a whole transaction) on a fresh connection if
    the old one died, as it does when PostgreSQL restarts: once more at once, then again
    with growing pauses for up to ``patience`` seconds while the server is away."""
    deadline = time.monotonic() + patience
    pause = 0.1
    while True:
        try:
            return action()
        except (OperationalError, InterfaceError):
            connection = connections[using]
            if connection.in_atomic_block:
                raise
            connection.close()
            if pause > 0.1 and time.monotonic() + pause > deadline:
                raise
            logger.warning("batchtasks database connection lost; reconnecting db=%s", using)
            if pause > 0.1:
                time.sleep(pause)
            pause = min(pause * 2, 2.0)


def _tune_postgresql(settings_dict: dict[str, Any]) -> None:
    from psycopg import IsolationLevel

    options = settings_dict["OPTIONS"] = dict(settings_dict.get("OPTIONS") or {})
    options["isolation_level"] = IsolationLevel.READ_COMMITTED
    if get_settings().PREPARED_STATEMENTS:
        options.setdefault("server_side_binding", True)
        options.setdefault("prepare_threshold", 2)
    if not get_settings().SYNCHRONOUS_COMMIT:
        flags = options.get("options", "")
        options["options"] = f"{flags} -c synchronous_commit=off".strip()


def read_committed(using: str) -> None:
    """Make the transaction just begun on ``using`` READ COMMITTED (PostgreSQL), which a
    pass that locks a row and then counts needs to see what committed while it waited."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    from psycopg import IsolationLevel

    connection.ensure_connection()
    if getattr(connection, "isolation_level", None) not in (None, IsolationLevel.READ_COMMITTED):
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")


def close_state_connections() -> None:
    """Close this thread's state connections."""
    for alias in list(_registered):
        try:
            connections[alias].close()
        except ConnectionDoesNotExist:
            continue


_inherited: list[Any] = []


def _forget_after_fork() -> None:
    # A forked pool process must never use its parent's socket. The inherited wrappers
    # are dropped but kept referenced: collecting them would close the connection,
    # which sends the server a goodbye over the parent's session.
    for alias in list(_registered):
        try:
            wrapper = connections[alias]
        except ConnectionDoesNotExist:
            continue
        _inherited.append(wrapper)
        del connections[alias]


os.register_at_fork(after_in_child=_forget_after_fork)
