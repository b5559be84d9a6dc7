"""A worker cut off PostgreSQL stops its own runs before their leases run out.

Another worker takes over an attempt whose lease has run out and runs it again; the
first run must be over by then, or the task runs twice at once (the fence refuses the
first run's writes, but not its side effects). The worker that cannot renew its leases
knows when they run out without asking the database: from the moment it sent the last
renewal that was answered. Its agent stops the runs it holds in time, from a thread
that never waits on the database (the tests cut the worker's connections with a proxy,
``tests.netfault``, as a network partition does).
"""

from __future__ import annotations

import time
from pathlib import Path

from django.db import connection

from batchtasks import BatchTask, TaskState
from batchtasks.models import BatchTaskAttempt
from batchtasks.services.leases import TIME_LIMIT
from batchtasks.transport.depth import queue_depth
from tests.conftest import runs_of
from tests.netfault import proxied
from tests.test_recovery import define
from tests.test_workers import wait_final
from tests.workers import database_url, wait_for

SLEEP = ["batch.examples.sleep"]
#: Short leases, beats and sweeps, so that a lease runs out within seconds.
FAST = {
    "BATCHTASKS_LEASE_SECONDS": "6",
    "BATCHTASKS_HEARTBEAT_SECONDS": "1",
    "BATCHTASKS_SWEEP_INTERVAL": "1",
    "BATCHTASKS_KILL_GRACE": "1",
}


def pulses(record_dir: Path, task_id: int, pid: int) -> list[float]:
    """When the run in ``pid`` was seen sleeping (``examples.sleep``'s ``pulse``)."""
    path = record_dir / f"{task_id}.pulse"
    lines = path.read_text().splitlines() if path.exists() else []
    return [float(when) for who, when in (line.split() for line in lines) if int(who) == pid]


def through(port: int) -> str:
    """The test database's URL, by way of the proxy on ``port``."""
    s = connection.settings_dict
    direct = f"{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}"
    return database_url().replace(f"@{direct}/", f"@127.0.0.1:{port}/")


def test_a_worker_cut_off_the_database_stops_its_run_before_another_takes_it_over(
    start_worker, record_dir: Path
) -> None:
    s = connection.settings_dict
    with proxied((s["HOST"] or "127.0.0.1", int(s["PORT"] or 5432))) as proxy:
        cut_off = start_worker(
            "cut", SLEEP, concurrency=1, env={**FAST, "DATABASE_URL": through(proxy.port)}
        )
        task = BatchTask.submit(
            "examples.sleep", {"seconds": 15, "cooperate": False, "record": True, "pulse": True}
        )
        wait_for(lambda: runs_of(record_dir, task.pk))
        ((first_pid, _, _),) = runs_of(record_dir, task.pk)
        proxy.cut()
        start_worker("other", SLEEP, concurrency=1, env=FAST)

        (done,) = wait_final(task, timeout=90)
        proxy.mend()  # the cut-off worker's late writes arrive now: refused by the fence

        runs = runs_of(record_dir, task.pk)
        assert done.state == TaskState.SUCCEEDED
        assert (done.attempt, done.lost_runs) == (2, 1)
        assert [run[2] is None for run in runs] == [True, False], runs  # the first never ended
        (_, second_start, _) = runs[1]
        seen = pulses(record_dir, task.pk, first_pid)
        assert seen, "the first run never slept"
        assert max(seen) < second_start, (
            f"the first run went on {max(seen) - second_start:.1f} s after the second started"
        )
        time.sleep(2)  # what the cut-off worker wrote late has arrived
        outcomes = BatchTaskAttempt.objects.filter(task=task).order_by("number")
        assert [o.outcome for o in outcomes] == ["lost", "succeeded"]
        assert cut_off.process is not None and cut_off.process.poll() is None  # still up
        # Out of reach, it took no more messages of its queue: the next attempt's went to
        # the other worker at once; reached again, it takes them again.
        log = cut_off.log()
        assert "not taking messages of queues=batch.examples.sleep" in log
        assert f"batchtask-{task.pk}-2" not in log
        wait_for(lambda: "database reached again" in cut_off.log(), timeout=30)
        wait_for(lambda: "Started consuming from batch.examples.sleep" in cut_off.log())
        (again,) = wait_final(BatchTask.submit("examples.sleep", {"seconds": 0.1}))
        assert again.state == TaskState.SUCCEEDED


def test_time_limits_strike_while_the_database_is_out_of_reach(
    start_worker, record_dir: Path
) -> None:
    """The agent's local thread enforces them: nothing of it waits on the database that its
    other thread's heartbeat waits on (default leases: fencing would come 23.5 s later)."""
    define("examples.sleep", timeout=2)
    s = connection.settings_dict
    with proxied((s["HOST"] or "127.0.0.1", int(s["PORT"] or 5432))) as proxy:
        # Beats twice a second: one waits on the cut before the limit is due.
        env = {"DATABASE_URL": through(proxy.port), "BATCHTASKS_HEARTBEAT_SECONDS": "0.5"}
        cut_off = start_worker("cut", SLEEP, concurrency=1, env=env)
        task = BatchTask.submit(
            "examples.sleep", {"seconds": 60, "cooperate": False, "record": True, "pulse": True}
        )
        wait_for(lambda: runs_of(record_dir, task.pk))
        proxy.cut()
        wait_for(lambda: "reason=timeout signal=SIGTERM" in cut_off.log(), timeout=60)
        assert proxy.cut_off
        assert "reason=fenced" not in cut_off.log()
        proxy.mend()  # its outcome is written now
        (done,) = wait_final(task, timeout=60)

    assert (done.state, done.error.type) == (TaskState.FAILED, TIME_LIMIT)
    [(_, _, end)] = runs_of(record_dir, task.pk)
    assert end is None


def test_a_run_does_not_start_once_its_claim_is_older_than_the_lease_allows() -> None:
    """A claim whose answer waited out a partition: its lease may be gone already."""
    from batchtasks.core.conf import get_settings
    from batchtasks.worker import fencing, running

    saved = running.claimed()
    try:
        running.note_claim(time.monotonic())
        assert fencing.may_start()
        running.note_claim(time.monotonic() - get_settings().LEASE_SECONDS)
        assert not fencing.may_start()
        running.note_claim(0.0)  # no claim of a worker's message (the test helpers)
        assert fencing.may_start()
    finally:
        running.note_claim(saved)


def test_a_message_whose_claim_cannot_reach_the_database_goes_back_to_the_queue(
    start_worker,
) -> None:
    """A worker cut off PostgreSQL just after it took a message waits for the claim as
    long as a lease, then gives the message back to the broker: another worker runs the
    task at once. Dropped, the message left its task `queued` (holding a slot of its
    type's limit) until the sweeper published it again after ``REPUBLISH_AFTER`` (the
    chaos suite's db_partition: throughput after the fault 72 to 84 % of before)."""
    env = {**FAST, "BATCHTASKS_REPUBLISH_AFTER": "600"}  # no sweep publishes it meanwhile
    s = connection.settings_dict
    with proxied((s["HOST"] or "127.0.0.1", int(s["PORT"] or 5432))) as proxy:
        start_worker("cut", SLEEP, concurrency=1, env={**env, "DATABASE_URL": through(proxy.port)})
        proxy.cut()
        task = BatchTask.submit("examples.sleep", {"seconds": 0.1})
        wait_for(lambda: queue_depth(SLEEP[0]) == 0)  # the cut-off worker took it
        other = start_worker("other", SLEEP, concurrency=1, env=env)

        (done,) = wait_final(task, timeout=60)
        proxy.mend()

        assert (done.state, done.attempt, done.lost_runs) == (TaskState.SUCCEEDED, 1, 0)
        assert done.worker == other.hostname
