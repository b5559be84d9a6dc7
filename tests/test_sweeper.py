"""The sweeper, the heartbeat and the user-side recovery calls, against the real database
and broker (no worker process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from io import StringIO

import psycopg
import pytest
from django.core.management import call_command
from django.db import connections, transaction
from django.db import connections as db_connections
from django.db.models import F
from django.utils import timezone

from batchtasks import BatchTask, TaskState, transitions
from batchtasks.core.exceptions import InvalidTaskOption
from batchtasks.core.states import AttemptOutcome, FinalizeState
from batchtasks.db.connections import close_state_connections
from batchtasks.models import (
    BatchTaskAttempt,
    BatchTaskDefinition,
    BatchTaskParameters,
    BatchWorker,
    WorkerState,
)
from batchtasks.services import sweeper
from batchtasks.services.definitions import get_definition
from batchtasks.services.sweeper import sweep
from batchtasks.services.workers import Identity, register_worker
from batchtasks.transport.depth import queue_depth
from tests.conftest import purge_queues, set_limit
from tests.taskdb import TASK_DB
from tests.workers import ROOT, database_url, task_database_env, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "batch.examples.sleep"
GONE = "d" * 32


@pytest.fixture(autouse=True)
def _empty_queues() -> None:
    purge_queues([QUEUE, "batch.examples.noop"])


def depth(queue: str) -> int:
    return queue_depth(queue)


def define_sleep(**values: object) -> None:
    BatchTaskDefinition.objects.filter(pk=get_definition("examples.sleep").pk).update(**values)


def running_task(lease_ago: float = 5, instance: str = GONE) -> BatchTask:
    """A task a worker "w1@gone" claimed, whose lease ran out ``lease_ago`` s ago."""
    task = BatchTask.submit("examples.sleep", {"seconds": 1})
    fence = transitions.Fence(task.pk, task.attempt, instance)
    assert transitions.claim(fence, worker="w1@gone", pid=1, lease_seconds=30, using=TASK_DB)
    BatchTask.objects.filter(pk=task.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=lease_ago)
    )
    purge_queues([QUEUE])
    return task


def test_an_expired_lease_is_a_lost_run_that_runs_again_at_once() -> None:
    define_sleep(max_attempts=1)  # a lost run does not count as an attempt
    task = running_task()

    report = sweep(using=TASK_DB)

    assert report is not None and report.requeued == 1
    task.refresh_from_db()
    assert (task.state, task.attempt, task.lost_runs) == (TaskState.QUEUED, 2, 1)  # refilled
    lost = BatchTaskAttempt.objects.get(task=task, number=1)
    assert (lost.outcome, lost.error_type) == ("lost", "batchtasks.LeaseExpired")
    assert "w1@gone" in lost.error_message
    assert depth(QUEUE) == 1


def test_past_max_lost_runs_an_expired_lease_fails_naming_the_worker() -> None:
    define_sleep(max_lost_runs=0)
    task = running_task()

    sweep(using=TASK_DB)

    task.refresh_from_db()
    assert task.state == TaskState.FAILED
    assert task.error.type == "batchtasks.LeaseExpired"
    assert "lease lost: worker w1@gone stopped renewing it" in task.error.message


def test_an_expired_lease_of_a_cancelled_task_ends_it_cancelled() -> None:
    task = running_task()
    assert task.cancel()

    report = sweep(using=TASK_DB)

    task.refresh_from_db()
    assert report is not None and report.cancelled == 1
    assert (task.state, task.attempt) == (TaskState.CANCELLED, 1)
    assert depth(QUEUE) == 0


def test_a_live_lease_is_left_alone() -> None:
    task = running_task(lease_ago=-30)

    sweep(using=TASK_DB)

    task.refresh_from_db()
    assert task.state == TaskState.RUNNING


def test_queued_tasks_are_published_again_by_age_with_backoff(settings) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "REPUBLISH_AFTER": 10}
    tasks = BatchTask.submit_many("examples.noop", [{}] * 3)
    ids = [t.pk for t in tasks]
    assert depth("batch.examples.noop") == 3  # a backlog: republishing does not wait for it
    queued = BatchTask.objects.filter(pk__in=ids)
    queued.update(queued_at=timezone.now() - timedelta(seconds=11))

    first = sweep(using=TASK_DB)
    second = sweep(using=TASK_DB)
    queued.update(republished_at=F("republished_at") - timedelta(seconds=11))
    third = sweep(using=TASK_DB)  # once: 10 s since; after one republish it waits 20 s
    queued.update(republished_at=F("republished_at") - timedelta(seconds=10))
    fourth = sweep(using=TASK_DB)

    counts = [r.republished for r in (first, second, third, fourth) if r is not None]
    assert counts == [3, 0, 0, 3]
    assert depth("batch.examples.noop") == 9
    assert list(queued.values_list("republish_count", flat=True)) == [2, 2, 2]


def test_a_recent_queued_task_is_not_published_again(settings) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "REPUBLISH_AFTER": 30}
    BatchTask.submit_many("examples.noop", [{}] * 3)

    report = sweep(using=TASK_DB)

    assert report is not None and report.republished == 0
    assert depth("batch.examples.noop") == 3


def test_retention_purges_old_finished_tasks_and_keeps_the_rest() -> None:
    definition = get_definition("examples.noop")
    BatchTaskDefinition.objects.filter(pk=definition.pk).update(retention=3600)
    old, recent, waiting = BatchTask.submit_many("examples.noop", [{}] * 3)
    BatchTask.objects.filter(pk=old.pk).update(
        state=TaskState.SUCCEEDED, finished_at=timezone.now() - timedelta(hours=2)
    )
    BatchTask.objects.filter(pk=recent.pk).update(
        state=TaskState.FAILED, finished_at=timezone.now() - timedelta(minutes=5)
    )

    out = StringIO()
    call_command("batchtasks", "purge", stdout=out)

    assert "Purged 1 finished task." in out.getvalue()
    assert set(BatchTask.objects.values_list("pk", flat=True)) == {recent.pk, waiting.pk}


def expired_tasks(n: int, **values: object) -> list[int]:
    """``n`` no-op tasks (retention an hour) that succeeded two hours ago, each with its
    parameters and an attempt; their ids."""
    BatchTaskDefinition.objects.filter(pk=get_definition("examples.noop").pk).update(retention=3600)
    ids = [task.pk for task in BatchTask.submit_many("examples.noop", [{}] * n)]
    finished = timezone.now() - timedelta(hours=2)
    BatchTask.objects.filter(pk__in=ids).update(
        state=TaskState.SUCCEEDED, finished_at=finished, **values
    )
    BatchTaskAttempt.objects.bulk_create(
        BatchTaskAttempt(task_id=i, number=1, finished_at=finished, outcome="succeeded")
        for i in ids
    )
    return ids


def left_of(ids: list[int]) -> tuple[int, int, int]:
    """How many of these tasks, and of their parameters and attempts, are still there."""
    return (
        BatchTask.objects.filter(pk__in=ids).count(),
        BatchTaskParameters.objects.filter(task_id__in=ids).count(),
        BatchTaskAttempt.objects.filter(task_id__in=ids).count(),
    )


def test_one_purge_deletes_more_expired_tasks_than_a_chunk_with_their_records(
    monkeypatch,
) -> None:
    monkeypatch.setattr(sweeper, "PURGE_CHUNK", 2)
    ids = expired_tasks(5)

    purged = sweeper.purge(using=TASK_DB)

    assert purged == 5
    assert left_of(ids) == (0, 0, 0)


def test_a_purge_stops_when_its_time_budget_is_spent(settings, monkeypatch) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "PURGE_SECONDS": 0}
    monkeypatch.setattr(sweeper, "PURGE_CHUNK", 2)
    ids = expired_tasks(5)

    first = sweeper.purge(using=TASK_DB)

    assert first == 2  # one chunk, then the budget is spent
    assert left_of(ids) == (3, 3, 3)
    assert sweeper.purge(using=TASK_DB, budget=60) == 3  # the next sweep goes on


def test_the_purge_command_goes_on_until_nothing_expired_is_left(settings, monkeypatch) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "PURGE_SECONDS": 0}  # a sweep's budget
    monkeypatch.setattr(sweeper, "PURGE_CHUNK", 2)
    ids = expired_tasks(5)

    out = StringIO()
    call_command("batchtasks", "purge", stdout=out)

    assert "Purged 5 finished tasks." in out.getvalue()
    assert left_of(ids) == (0, 0, 0)


def test_a_purge_keeps_recent_tasks_and_those_whose_finalizers_are_pending(
    monkeypatch,
) -> None:
    monkeypatch.setattr(sweeper, "PURGE_CHUNK", 2)
    doomed = expired_tasks(3)
    pending = expired_tasks(2, finalize_state=FinalizeState.PENDING)
    recent = expired_tasks(2)
    BatchTask.objects.filter(pk__in=recent).update(finished_at=timezone.now())
    waiting = BatchTask.submit("examples.noop", {})

    purged = sweeper.purge(using=TASK_DB)

    assert purged == 3
    assert left_of(doomed) == (0, 0, 0)
    assert left_of([*pending, *recent, waiting.pk]) == (5, 5, 4)  # a waiting task: no attempt


def test_a_purge_skips_a_task_another_transaction_holds_instead_of_waiting() -> None:
    held, free = expired_tasks(2)
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic(using=TASK_DB):
                BatchTask.objects.select_for_update().get(pk=held)
                locked.set()
                release.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        purged = sweeper.purge(using=TASK_DB, budget=5)
    finally:
        release.set()
        holder.join()

    assert purged == 1
    assert list(BatchTask.objects.filter(pk__in=[held, free]).values_list("pk", flat=True)) == [
        held
    ]


def boot(name: str, instance: str, pid: int = 1, space: str = "") -> Identity:
    return Identity(name, instance, pid, space, 0.0)


def test_silent_workers_are_marked_offline() -> None:
    register_worker(boot("quiet@host", "1" * 32), queues=[QUEUE], concurrency=2, using=TASK_DB)
    register_worker(boot("chatty@host", "2" * 32), queues=[QUEUE], concurrency=2, using=TASK_DB)
    BatchWorker.objects.filter(name="quiet@host").update(
        last_seen_at=timezone.now() - timedelta(minutes=5)
    )

    out = StringIO()
    call_command("batchtasks", "sweep", stdout=out)

    states = dict(BatchWorker.objects.values_list("name", "state"))
    assert states == {"quiet@host": WorkerState.OFFLINE, "chatty@host": WorkerState.ONLINE}
    assert "offline=1" in out.getvalue()


def test_a_dead_worker_boot_on_this_machine_gives_back_its_attempts_at_once() -> None:
    from batchtasks.services.workers import process_space

    here = process_space()
    assert here, "the tests run on Linux"
    register_worker(boot("w1@gone", GONE, pid=2**22 + 7, space=here), queues=[QUEUE],
                    concurrency=1, using=TASK_DB)  # fmt: skip
    task = running_task(lease_ago=-600)  # its lease is far from running out

    report = sweep(using=TASK_DB)

    task.refresh_from_db()
    assert report is not None and report.reaped == 1
    assert (task.state, task.attempt) == (TaskState.QUEUED, 2)
    assert BatchWorker.objects.get(instance=GONE).state == WorkerState.OFFLINE


def test_a_live_worker_boot_keeps_its_attempts() -> None:
    from batchtasks.services.workers import process_space

    alive = boot("w1@here", GONE, pid=os.getpid(), space=process_space())
    register_worker(alive, queues=[QUEUE], concurrency=1, using=TASK_DB)
    BatchWorker.objects.filter(instance=GONE).update(process_started=None)
    task = running_task(lease_ago=-600)

    report = sweep(using=TASK_DB)

    task.refresh_from_db()
    assert report is not None and report.reaped == 0
    assert task.state == TaskState.RUNNING


def sweep_meanwhile(monkeypatch, during: Callable[[], object]) -> list[object]:
    """Run ``during`` while a sweep of this thread holds the cluster lock (in the place of
    its purge); return what it returned."""
    seen: list[object] = []
    calls = iter([during])  # the first sweep's purge only (if a second got the lock too)

    def purge(*, using: str, budget: float | None = None) -> int:
        for action in calls:
            seen.append(action())
        return 0

    monkeypatch.setattr(sweeper, "purge", purge)
    return seen


def in_a_thread(action: Callable[[], object]) -> object:
    """``action`` in a thread of its own: another client of the database (through a
    pooler, another client connection), with connections of its own."""
    result: list[object] = []

    def run() -> None:
        try:
            result.append(action())
        finally:
            close_state_connections()
            db_connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert result, "the thread failed (see its traceback above)"
    return result[0]


def sweep_lock_holders() -> int:
    """Sessions of this database that hold the sweep's advisory lock now."""
    with connections[TASK_DB].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
            "AND (classid::bigint << 32) + objid::bigint = %s "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            [sweeper.LOCK_KEY],
        )
        return int(cursor.fetchone()[0])


def test_a_sweep_begun_while_another_sweeps_sweeps_nothing(monkeypatch) -> None:
    # Behind a PgBouncer in transaction mode a session lock went to whichever server
    # connection ran its statement, and the second sweeper, handed the same one, got it too.
    seen = sweep_meanwhile(monkeypatch, lambda: in_a_thread(lambda: sweep(using=TASK_DB)))

    assert sweep(using=TASK_DB) is not None
    assert seen == [None], "a second sweeper swept"
    assert in_a_thread(lambda: sweep(using=TASK_DB)) is not None  # free again after it


def test_a_finished_sweep_leaves_no_lock_behind(monkeypatch) -> None:
    # Another client's transaction, begun during the sweep, takes the server connection
    # that the sweep's statements just gave back (a pooler reuses the last one first); a
    # session lock taken there was then never released: its unlock ran on another one.
    other = psycopg.connect(database_url(TASK_DB))
    try:
        seen = sweep_meanwhile(monkeypatch, lambda: other.execute("SELECT 1").fetchone())

        assert sweep(using=TASK_DB) is not None
        other.commit()

        assert seen == [(1,)]
        assert sweep_lock_holders() == 0
    finally:
        other.close()


def test_a_sweeper_killed_while_sweeping_leaves_the_lock_at_once(tmp_path) -> None:
    script = (
        "import django, sys, time; django.setup()\n"
        "from batchtasks.services.sweeper import cluster_lock\n"
        f"with cluster_lock({TASK_DB!r}) as locked:\n"
        "    print('locked' if locked else 'busy', flush=True)\n"
        "    time.sleep(120)\n"
    )
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        **task_database_env(),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
    }
    holder = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, cwd=ROOT
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        assert sweep(using=TASK_DB) is None
    finally:
        holder.kill()
        holder.wait()

    assert wait_for(lambda: sweep(using=TASK_DB), timeout=30) is not None


def test_a_sweeper_frozen_while_sweeping_leaves_the_lock_after_a_lease(tmp_path) -> None:
    # A worker paused mid-sweep (SIGSTOP, docker pause, a VM stall) keeps its connection
    # open: without a limit its lock held the whole cluster's sweeps, and so every lost
    # lease, until it was resumed.
    script = (
        "import django, time; django.setup()\n"
        "from batchtasks.services.sweeper import cluster_lock\n"
        f"with cluster_lock({TASK_DB!r}) as locked:\n"
        "    print('locked' if locked else 'busy', flush=True)\n"
        "    time.sleep(1)\n"
        "print('done', flush=True)\n"
    )
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        **task_database_env(),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "BATCHTASKS_LEASE_SECONDS": "2",
    }
    holder = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, cwd=ROOT
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        holder.send_signal(signal.SIGSTOP)
        assert sweep(using=TASK_DB) is None

        assert wait_for(lambda: sweep(using=TASK_DB), timeout=30) is not None
    finally:
        holder.send_signal(signal.SIGCONT)
    # Resumed, it finds its lock gone and ends its sweep quietly.
    out, _ = holder.communicate(timeout=30)
    assert (out, holder.returncode) == (b"done\n", 0)


def test_retry_runs_a_failed_task_again_as_its_next_attempt() -> None:
    task = running_task()
    failed = transitions.Outcome(AttemptOutcome.FAILED, error_type="X")
    transitions.end_attempt(transitions.Fence(task.pk, 1, GONE), failed, using=TASK_DB)

    assert task.retry()

    assert (task.state, task.attempt, task.error) in {
        (TaskState.QUEUED, 2, None),
        (TaskState.NEW, 2, None),
    }
    assert not task.retry()  # only failed or cancelled tasks


def test_concurrent_submits_with_one_unique_key_create_one_task() -> None:
    set_limit("examples.noop", 1)
    barrier = threading.Barrier(8)
    ids: list[int] = []

    def submit() -> None:
        barrier.wait()
        try:
            ids.append(BatchTask.submit("examples.noop", unique_key="nightly").pk)
        finally:
            connections.close_all()
            close_state_connections()

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(ids) == 8 and len(set(ids)) == 1
    assert BatchTask.objects.filter(unique_key="nightly").count() == 1


def test_supersede_marks_the_older_waiting_task_skipped() -> None:
    set_limit("examples.noop", 1)
    BatchTask.submit("examples.noop")  # takes the only slot
    older = BatchTask.submit("examples.noop", {"v": 1}, unique_key="export")
    newer = BatchTask.submit(
        "examples.noop", {"v": 2}, unique_key="export", on_conflict="supersede"
    )

    older.refresh_from_db()
    assert older.state == TaskState.SKIPPED and older.state_code == 5
    assert newer.pk != older.pk and newer.params == {"v": 2}
    with pytest.raises(InvalidTaskOption, match="on_conflict"):
        BatchTask.submit("examples.noop", unique_key="export", on_conflict="replace")


def test_a_heartbeat_ends_attempts_no_pool_process_holds() -> None:
    from batchtasks.worker.heartbeat import Heartbeat
    from batchtasks.worker.stopping import Stopper

    # Past its limit by the database's clock: a time-out, for a type whose limits Celery
    # enforces (an isolated one); an inline type's are its worker's agent's to end.
    define_sleep(timeout=60, max_attempts=2, isolation="process")
    overran, vanished = BatchTask.submit_many("examples.sleep", [{}, {}])
    me = boot("w@x", "e" * 32)
    for task in (overran, vanished):
        fence = transitions.Fence(task.pk, 1, me.instance)
        assert transitions.claim(fence, worker="w@x", pid=1, lease_seconds=30, using=TASK_DB)
    BatchTask.objects.filter(pk=overran.pk).update(
        started_at=timezone.now() - timedelta(seconds=61)
    )

    # This process holds no Celery requests: whatever the database says w@x runs is lost,
    # at the second beat that misses it (a held finish is missed by one beat at most).
    heart = Heartbeat(me, Stopper(lambda fence: False))
    assert heart.beat(TASK_DB) == set()
    assert BatchTask.objects.filter(pk__in=[overran.pk, vanished.pk], state="running").count() == 2

    freed = heart.beat(TASK_DB)

    assert freed == {QUEUE}
    overran.refresh_from_db()
    vanished.refresh_from_db()
    timed_out = BatchTaskAttempt.objects.get(task=overran)
    assert timed_out.error_type == "billiard.exceptions.TimeLimitExceeded"
    assert "hard time limit of 60 s exceeded; worker w@x stopped it" in timed_out.error_message
    assert overran.state == TaskState.NEW and overran.run_after > timezone.now()  # backoff
    lost = BatchTaskAttempt.objects.get(task=vanished)
    assert (lost.outcome, lost.error_type) == ("lost", "billiard.exceptions.WorkerLostError")
    assert (vanished.state, vanished.attempt) == (TaskState.NEW, 2)  # due at once


def test_a_heartbeat_that_cannot_see_its_requests_loses_nothing(monkeypatch) -> None:
    from batchtasks.worker import heartbeat
    from batchtasks.worker.stopping import Stopper

    me = boot("w@x", "f" * 32)
    task = BatchTask.submit("examples.sleep", {})
    fence = transitions.Fence(task.pk, 1, me.instance)
    transitions.claim(fence, worker="w@x", pid=1, lease_seconds=1, using=TASK_DB)
    task.refresh_from_db()
    before = task.lease_expires_at

    class Unreadable(set):
        def __iter__(self):
            raise RuntimeError("Set changed size during iteration")

    monkeypatch.setattr(heartbeat.celery_state, "active_requests", Unreadable())
    heartbeat.Heartbeat(me, Stopper(lambda fence: False)).beat(TASK_DB)

    task.refresh_from_db()
    assert task.state == TaskState.RUNNING
    assert task.lease_expires_at - before > timedelta(seconds=20)  # renewed, not lost
    assert not BatchTaskAttempt.objects.filter(task=task).exists()
