"""A worker hears at once of a cancel of a task it runs (PostgreSQL LISTEN/NOTIFY): real
workers, the real board file its pool processes read (``batchtasks.worker.notices``)."""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import pytest
from django.db import connection

from batchtasks import BatchTask, TaskState
from tests import pgbouncer
from tests.test_recovery import FAST, state_of
from tests.workers import Worker, wait_for

pytestmark = pytest.mark.worker

SLEEP = ["batch.examples.sleep"]
direct = pytest.mark.skipif(
    pgbouncer.in_use(), reason="notifications do not pass a pooler in transaction mode"
)


def board(worker: Worker) -> Path:
    """The notice board of the worker's current boot."""
    parent = Path(tempfile.gettempdir(), f"batchtasks-stop-{os.getuid()}")
    found = wait_for(lambda: list(parent.glob(f"{worker.pid}-*/notices")), timeout=30)
    return found[0]


def heard(path: Path) -> int | None:
    """What the board says: the count of notices, ``None`` while it is not trusted."""
    word = struct.unpack("<q", path.read_bytes()[:8])[0]
    return word >> 1 if word & 1 else None


@direct
def test_a_worker_hears_a_cancel_of_a_task_it_runs_at_once(start_worker) -> None:
    worker = start_worker("w", SLEEP, concurrency=1, env=FAST)
    path = board(worker)
    before = wait_for(lambda: heard(path), timeout=30)  # trusted once a probe is heard
    task = BatchTask.submit("examples.sleep", {"seconds": 30})
    wait_for(lambda: state_of(task) == TaskState.RUNNING)

    task.cancel()

    wait_for(lambda: (heard(path) or 0) > before, timeout=10)
    wait_for(lambda: state_of(task) == TaskState.CANCELLED, timeout=30)


@direct
def test_a_listener_whose_connection_is_cut_listens_again_and_still_hears(
    start_worker,
) -> None:
    worker = start_worker("w", SLEEP, concurrency=1, env=FAST)
    path = board(worker)
    before = wait_for(lambda: heard(path), timeout=30)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'LISTEN %%' AND datname = current_database()"
        )
        assert cursor.fetchall() == [(True,)]

    # Whatever was said while it did not listen: it counts one more on hearing again.
    again = wait_for(lambda: (heard(path) or 0) > before and heard(path), timeout=30)
    task = BatchTask.submit("examples.sleep", {"seconds": 30})
    wait_for(lambda: state_of(task) == TaskState.RUNNING)
    task.cancel()

    wait_for(lambda: (heard(path) or 0) > again, timeout=10)


@pytest.mark.skipif(not pgbouncer.in_use(), reason="needs a pooler in transaction mode")
def test_behind_a_transaction_pooler_the_worker_knows_it_cannot_hear(start_worker) -> None:
    """Its probes never come back: it says so, and its board stays untrusted, so its pool
    processes read the cancel flags before every start (tests/test_batching.py)."""
    worker = start_worker("w", SLEEP, concurrency=1, env=FAST)
    path = board(worker)

    wait_for(lambda: worker.log_count("hears no probe") == 1, timeout=30)
    assert heard(path) is None
