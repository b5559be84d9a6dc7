"""The worker's own database connection for task state (claim, progress, finish, refill).

In worker processes it is a second connection beside the one plugin code uses, so that
progress and the outcome are written and seen at once even while a plugin holds a
transaction open, and so that it can be tuned for many tiny statements: on PostgreSQL
server-side binding with prepared statements, READ COMMITTED (the dispatcher's
lock-then-count needs it) and, unless ``SYNCHRONOUS_COMMIT``, commits that do not wait
for the WAL flush. A PostgreSQL crash can then lose the last fraction of a second of
worker state changes: the tasks concerned run again (at least once), and submits, which
use the caller's connection, are never affected.

Without prepared statements (``PREPARED_STATEMENTS``), nothing of this is session state:
the isolation level is part of each ``BEGIN`` and the commit setting is made for each
transaction alone (``AsynchronousCommit``), so that a pooler in transaction mode
(PgBouncer), which hands each transaction whichever server connection is free, loses
none of it and passes none of it on to another client.

Elsewhere (web requests, shells, commands) nothing opens a second connection: the
caller's own is used, so a web process holds no extra connection per thread.

A session whose writes are refused as read-only (SQLSTATE 25006) is dropped like a broken
one: after a failover its server is a standby (or a primary turned read-only), and only a
new connection reaches the one that now takes writes. Kept, it would fail every write for
as long as the worker lives.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from weakref import WeakSet

from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.utils.connection import ConnectionDoesNotExist

from ..core.conf import get_settings

logger = logging.getLogger(__name__)
T = TypeVar("T")
#: SQLSTATE read_only_sql_transaction: a write on a server that takes none.
READ_ONLY_SQLSTATE = "25006"
SUFFIX = ":batchtasks"
LOCK_SUFFIX = ":batchtasks-lock"
_registered: set[str] = set()
_dedicated = False


#: Held by whichever thread of a pool process uses its state connection: its timer thread
#: borrows the main thread's (``worker.progress``). Each statement on a state connection
#: shared between threads takes it too (``locked_if_shared``), so that a statement
#: forgotten outside it waits rather than joining the other thread's transaction.
state_lock = threading.RLock()


def locked_if_shared(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """Execute wrapper of state connections: a statement on one that another thread
    shares runs holding ``state_lock`` (a thread holding it for a transaction keeps it
    whole; a reentrant lock, so a thread that holds it already goes on)."""
    if not context["connection"].allow_thread_sharing:
        return execute(sql, params, many, context)
    with state_lock:
        return execute(sql, params, many, context)


def use_dedicated_connections(enabled: bool = True) -> None:
    """Give this process (and the processes it forks) a state connection of its own per
    database; worker processes do, at start. Their ordinary connections (plugins',
    submits', schedules') are dropped once read-only too."""
    global _dedicated
    _dedicated = enabled
    if enabled:
        connection_created.connect(_watch_read_only, dispatch_uid="batchtasks-read-only")


def _watch_read_only(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    if connection.vendor == "postgresql" and drop_if_read_only not in connection.execute_wrappers:
        connection.execute_wrappers.append(drop_if_read_only)


def keepalive_options(lease_seconds: float) -> dict[str, int]:
    """libpq's options that make a worker's connection to a server it can no longer reach
    fail within about a third of a lease, rather than wait the kernel's many minutes: TCP
    keepalives while it waits for an answer, a user timeout for what it sent and nobody
    acknowledged, and a connect timeout. Client-side only (a pooler sees none of them)."""
    third = max(3, int(lease_seconds / 3))
    return {
        "keepalives": 1,
        "keepalives_idle": max(1, third // 2),
        "keepalives_interval": max(1, third // 6),
        "keepalives_count": 3,
        "tcp_user_timeout": third * 1000,
        "connect_timeout": max(2, third // 2),
    }


def add_keepalives(lease_seconds: float) -> None:
    """Give this process's PostgreSQL databases ``keepalive_options`` where their
    ``OPTIONS`` set none of their own (worker processes, at boot, before the pool forks)."""
    for alias in connections:
        settings_dict = connections.settings[alias]
        if "postgresql" not in settings_dict.get("ENGINE", ""):
            continue
        options = settings_dict.setdefault("OPTIONS", {})
        for name, value in keepalive_options(lease_seconds).items():
            options.setdefault(name, value)


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
        _add(base, alias, tune=True)
    else:
        _replace_if_unusable(wrapper)
    return alias


def lock_db(using: str) -> str:
    """The alias of this thread's connection to ``using``'s database for a lock held while
    other connections work and commit (the sweeper's), in any process."""
    base = using.removesuffix(SUFFIX)
    alias = base + LOCK_SUFFIX
    try:
        wrapper = connections[alias]
    except ConnectionDoesNotExist:
        _add(connections[base], alias, tune=False)
    else:
        _replace_if_unusable(wrapper)
    return alias


def _add(base: BaseDatabaseWrapper, alias: str, *, tune: bool) -> None:
    wrapper = base.copy(alias)
    # Persistent whatever CONN_MAX_AGE says (Django's default of 0 would mean a new
    # connection per task); a failed connection is still replaced, below.
    wrapper.settings_dict["CONN_MAX_AGE"] = None
    if wrapper.vendor == "postgresql":
        wrapper.execute_wrappers.append(drop_if_read_only)
    if tune:  # a state connection, which a pool process's timer thread may share
        wrapper.execute_wrappers.insert(0, locked_if_shared)
    if tune and wrapper.vendor == "postgresql":
        _tune_postgresql(wrapper)
    connections[alias] = wrapper
    _registered.add(alias)


def _replace_if_unusable(wrapper: BaseDatabaseWrapper) -> None:
    # Nothing closes these connections at the end of a request or task: drop one here
    # once it has failed (a restarted server) or outlived CONN_MAX_AGE.
    if not wrapper.in_atomic_block:
        wrapper.close_if_unusable_or_obsolete()


def unreachable(error: BaseException) -> bool:
    """Whether ``error`` says the database could not be reached or written (a lost or
    refused connection, a session turned read-only), not that a statement was wrong."""
    return isinstance(error, OperationalError | InterfaceError) or read_only(error)


def read_only(error: BaseException) -> bool:
    """Whether ``error`` is a write refused because the session is read-only (25006)."""
    cause = error.__cause__ or error
    return getattr(cause, "sqlstate", None) == READ_ONLY_SQLSTATE


def drop_if_read_only(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """Execute wrapper of the worker's own connections: a statement refused as read-only
    makes its connection obsolete, so that it is closed before its next use (a new one
    may reach the server that takes writes now)."""
    try:
        return execute(sql, params, many, context)
    except DatabaseError as error:
        if read_only(error):
            context["connection"].close_at = time.monotonic()
        raise


def reconnecting(action: Callable[[], T], using: str, *, patience: float = 0.0) -> T:
    """Run ``action`` (guarded writes, or a whole transaction) on a fresh connection if
    the old one died, as it does when PostgreSQL restarts, or turned read-only, as it
    does in a failover: once more at once, then again with growing pauses for up to
    ``patience`` seconds while the server is away."""
    deadline = time.monotonic() + patience
    pause = 0.1
    while True:
        try:
            return action()
        except DatabaseError as error:
            if not unreachable(error):
                raise
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


def _tune_postgresql(wrapper: BaseDatabaseWrapper) -> None:
    from psycopg import IsolationLevel

    settings_dict = wrapper.settings_dict
    options = settings_dict["OPTIONS"] = dict(settings_dict.get("OPTIONS") or {})
    options["isolation_level"] = IsolationLevel.READ_COMMITTED  # sent with each BEGIN
    if get_settings().PREPARED_STATEMENTS:
        options.setdefault("server_side_binding", True)
        options.setdefault("prepare_threshold", 2)
    wrapper.execute_wrappers.append(AsynchronousCommit())


class AsynchronousCommit:
    """The state connection's execute wrapper: unless ``SYNCHRONOUS_COMMIT``, the statement
    that begins a transaction (each one outside ``atomic``) first makes that transaction
    commit without waiting for the WAL flush, in the same round trip. Per transaction, not
    per session (a startup option or a plain ``SET``): a pooler in transaction mode
    refuses or drops the one and hands the other to whichever client comes next. With
    ``PREPARED_STATEMENTS``, which need the session to be the client's own anyway, it is
    set once per connection instead (a statement per transaction cost 30-60 us of CPU)."""

    #: For one transaction: as a statement of it, and as a call, which in a pipeline's
    #: implicit transaction does what ``SET LOCAL`` does without the warning that
    #: ``SET LOCAL`` outside ``BEGIN`` gives there.
    SET_LOCAL = "SET LOCAL synchronous_commit = off"
    SET_LOCAL_CALL = "SELECT set_config('synchronous_commit', 'off', true)"
    SET_SESSION = "SET synchronous_commit = off"

    def __init__(self) -> None:
        from psycopg import ClientCursor
        from psycopg.pq import TransactionStatus

        self.client_cursor = ClientCursor
        self.idle = TransactionStatus.IDLE
        self._setter: Any = None  # a cursor of the driver connection for SET_LOCAL_CALL
        #: Driver connections whose session has the setting (with prepared statements).
        self._sessions: WeakSet[Any] = WeakSet()

    def __call__(
        self,
        execute: Callable[..., Any],
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        wrapper = context["connection"]
        driver = wrapper.connection
        if get_settings().SYNCHRONOUS_COMMIT or driver.info.transaction_status != self.idle:
            return execute(sql, params, many, context)  # in a transaction that has it
        if get_settings().PREPARED_STATEMENTS:
            # Prepared statements are session state already: the session is this client's
            # alone (no pooler in transaction mode), so it is set once per connection.
            if driver not in self._sessions:
                driver.execute(self.SET_SESSION)
                self._sessions.add(driver)
            return execute(sql, params, many, context)
        cursor = context["cursor"].cursor
        if isinstance(cursor, self.client_cursor) and not many:
            # Client-side binding (no prepared statements): one simple-query message, whose
            # statements run as one transaction; the caller reads the second one's result.
            result = execute(f"{self.SET_LOCAL}; {sql}", params, many, context)
            cursor.nextset()
            return result
        # Server-side binding takes one statement per message: both in one pipeline, sent
        # with a single Sync (one transaction, one round trip).
        if self._setter is None or self._setter.connection is not driver:
            self._setter = driver.cursor()  # kept: a new cursor per statement cost 10 us
        with wrapper.wrap_database_errors, driver.pipeline():
            self._setter.execute(self.SET_LOCAL_CALL)
            return execute(sql, params, many, context)


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
