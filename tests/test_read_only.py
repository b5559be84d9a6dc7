"""A failover turns the database read-only under a worker: every write of the sessions it
holds fails with SQLSTATE 25006 (read_only_sql_transaction), and only a new connection
reaches a server that takes writes. The worker must drop such a session and connect
again, not go on failing on it (bench/chaos's read_only_failover, on this machine)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from django.db import connection

from batchtasks import BatchTask, TaskState
from tests.test_recovery import FAST
from tests.workers import wait_for

pytestmark = pytest.mark.worker

SLEEP = ["batch.examples.sleep"]


@pytest.fixture
def admin() -> Iterator[psycopg.Connection[object]]:
    """A session of its own on the server, for settings of the test database."""
    s = connection.settings_dict
    with psycopg.connect(
        host=s["HOST"], port=s["PORT"], user=s["USER"], dbname="postgres", autocommit=True
    ) as session:
        yield session


def state(task: BatchTask) -> str:
    return str(BatchTask.objects.values_list("state", flat=True).get(pk=task.pk))


def sessions_of_others() -> int:
    """Client sessions on the test database but this test's own."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        return int(cursor.fetchone()[0])


def test_a_worker_whose_sessions_turned_read_only_connects_again(
    start_worker, admin: psycopg.Connection[object]
) -> None:
    start_worker("w1", SLEEP, env=FAST)
    first = BatchTask.submit("examples.sleep", {"seconds": 0.05})
    wait_for(lambda: state(first) == TaskState.SUCCEEDED, timeout=60)
    name = connection.settings_dict["NAME"]
    # New sessions are read-only: the worker's, ended here, come back read-only (this
    # test's own session, older, still writes).
    admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        second = BatchTask.submit("examples.sleep", {"seconds": 0.05})
        wait_for(lambda: sessions_of_others() >= 2, timeout=30)  # the worker's, read-only
    finally:
        # The failover is over: a new session writes; the worker's read-only ones do not.
        admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
    wait_for(lambda: state(second) == TaskState.SUCCEEDED, timeout=60)
