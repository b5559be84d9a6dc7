"""Nothing batchtasks needs outlives a transaction, so that it works behind a pooler that
hands each transaction whichever server connection is free (PgBouncer in transaction
mode; the PgBouncer leg, .ci/pgbouncer, runs this file through one). The sweeper's lock
is tested in test_sweeper.py."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from django.db import DataError, connections, transaction

from batchtasks.db import connections as state_connections
from batchtasks.db.connections import state_db
from batchtasks.models import BatchQueue
from tests import pgbouncer
from tests.workers import database_url

pytestmark = pytest.mark.django_db(transaction=True)

SETTING = "SELECT current_setting('synchronous_commit')"


@pytest.fixture(params=[True, False], ids=["prepared", "unprepared"])
def state(request: pytest.FixtureRequest, settings) -> Iterator[str]:
    """A worker process's state connection (with and without prepared statements, which
    change how its statements are sent); closed and forgotten after the test."""
    if request.param and pgbouncer.in_use():
        pytest.skip("prepared statements belong to a session: off behind PgBouncer")
    settings.BATCHTASKS = {**settings.BATCHTASKS, "PREPARED_STATEMENTS": request.param}
    state_connections.use_dedicated_connections()
    alias = state_db("default")
    assert alias != "default"
    try:
        yield alias
    finally:
        state_connections.use_dedicated_connections(False)
        connections[alias].close()
        del connections[alias]


def one(alias: str, sql: str) -> object:
    with connections[alias].cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def test_worker_state_writes_commit_without_waiting_for_the_wal_flush(state: str) -> None:
    # Its own transaction: a statement outside any.
    assert one(state, SETTING) == "off"
    queue = BatchQueue.objects.create(name="batch.session-state")
    with connections[state].cursor() as cursor:  # the same in a statement that writes
        cursor.execute(
            f"UPDATE {BatchQueue._meta.db_table} SET max_concurrency = 1 WHERE id = %s "
            f"RETURNING ({SETTING})",
            [queue.pk],
        )
        assert cursor.fetchall() == [("off",)]
    with transaction.atomic(using=state):  # and every statement of a transaction
        assert [one(state, SETTING), one(state, SETTING)] == ["off", "off"]


def test_no_other_client_inherits_the_state_connections_commit_setting(state: str) -> None:
    # Through a pooler the next client is handed the server connection the state
    # connection just used: a session-wide SET would reach it.
    for _ in range(3):
        assert one(state, SETTING) == "off"
        assert one("default", SETTING) == "on"
    with psycopg.connect(database_url(), autocommit=True) as other:
        assert other.execute(SETTING).fetchone() == ("on",)


def test_with_synchronous_commit_state_writes_wait_for_the_flush(state: str, settings) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "SYNCHRONOUS_COMMIT": True}
    connections[state].close()
    del connections[state]
    assert state_db("default") == state  # a new one, made with this setting

    assert one(state, SETTING) == "on"
    with transaction.atomic(using=state):
        assert one(state, SETTING) == "on"


def test_a_failed_state_statement_leaves_the_connection_usable(state: str) -> None:
    with pytest.raises(DataError), connections[state].cursor() as cursor:
        cursor.execute("SELECT 1 / 0")
    assert one(state, SETTING) == "off"
    with pytest.raises(DataError), transaction.atomic(using=state):
        one(state, "SELECT 1 / 0")
    with transaction.atomic(using=state):
        assert one(state, SETTING) == "off"


def test_a_statement_on_a_shared_state_connection_waits_for_the_thread_holding_it(
    state: str,
) -> None:
    """A pool process's timer thread shares its state connection and writes under
    ``state_lock``, a transaction at times; a statement of the main thread that did not
    take the lock ran inside that transaction (or began one that nothing committed, and
    the timer's next ``set_autocommit`` failed with INTRANS: successes written and
    finalized, then rolled back, and the task ran again). Each statement on a shared
    state connection now takes the lock itself."""
    import threading
    import time

    from batchtasks.worker.progress import state_lock

    wrapper = connections[state]
    wrapper.ensure_connection()
    wrapper.inc_thread_sharing()
    inside, done = threading.Event(), threading.Event()

    def timer() -> None:  # as worker.progress._Timer's thread does
        connections[state] = wrapper
        with state_lock, transaction.atomic(using=state):
            wrapper.cursor().execute("SELECT 1")
            inside.set()
            time.sleep(0.5)
        done.set()

    thread = threading.Thread(target=timer)
    thread.start()
    try:
        inside.wait(10)
        assert one(state, "SELECT 1") == 1  # without the lock, inside the timer's transaction
        assert done.is_set(), "the statement ran while another thread held the connection"
    finally:
        thread.join(10)
        wrapper.dec_thread_sharing()
    assert (
        wrapper.connection.info.transaction_status
        == wrapper.connection.info.transaction_status.IDLE
    )
