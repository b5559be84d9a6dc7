"""The sweeper and the user-side recovery calls, against the real database and broker."""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from io import StringIO

import pytest
import redis
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from batchtasks import BatchTask, TaskState, transitions
from batchtasks.db import close_state_connections, state_db
from batchtasks.definitions import get_definition
from batchtasks.exceptions import InvalidTaskOption
from batchtasks.lease import register_worker
from batchtasks.models import BatchTaskAttempt, BatchTaskDefinition, BatchWorker, WorkerState
from batchtasks.sweeper import cluster_lock, sweep
from tests.conftest import purge_queues, set_limit

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "batch.examples.sleep"


@pytest.fixture(autouse=True)
def _empty_queues() -> None:
    purge_queues([QUEUE, "batch.examples.noop"])


def depth(queue: str) -> int:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    return int(client.llen(os.environ["BATCHTASKS_REDIS_PREFIX"] + queue))


def running_task(max_attempts: int = 1, lease_ago: float = 5) -> BatchTask:
    """A task a worker "w1@gone" claimed, whose lease ran out ``lease_ago`` s ago."""
    BatchTaskDefinition.objects.filter(pk=get_definition("examples.sleep").pk).update(
        max_attempts=max_attempts
    )
    task = BatchTask.submit("examples.sleep", {"seconds": 1})
    assert transitions.claim(task.pk, worker="w1@gone", lease_seconds=30, using="default")
    BatchTask.objects.filter(pk=task.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=lease_ago)
    )
    purge_queues([QUEUE])
    return task


def test_an_expired_lease_runs_the_task_again_while_attempts_remain() -> None:
    task = running_task(max_attempts=3)

    report = sweep(using=state_db("default"))

    assert report is not None and report.requeued == 1
    task.refresh_from_db()
    assert (task.state, task.attempt) == (TaskState.QUEUED, 2)  # refilled at once
    lost = BatchTaskAttempt.objects.get(task=task, number=1)
    assert (lost.outcome, lost.error_type) == ("failed", "batchtasks.LeaseExpired")
    assert "w1@gone" in lost.error_message
    assert depth(QUEUE) == 1


def test_an_expired_lease_fails_the_last_attempt_naming_the_worker() -> None:
    task = running_task(max_attempts=1)

    sweep(using=state_db("default"))

    task.refresh_from_db()
    assert task.state == TaskState.FAILED
    assert task.error.type == "batchtasks.LeaseExpired"
    assert "lease lost: worker w1@gone stopped renewing it" in task.error.message


def test_a_live_lease_is_left_alone() -> None:
    task = running_task(lease_ago=-30)

    sweep(using=state_db("default"))

    task.refresh_from_db()
    assert task.state == TaskState.RUNNING


def test_lost_messages_are_published_again_once(settings) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "REPUBLISH_AFTER": 10}
    tasks = BatchTask.submit_many("examples.noop", [{}] * 3)
    purge_queues(["batch.examples.noop"])  # as a Redis restarted empty would
    old = timezone.now() - timedelta(seconds=11)
    BatchTask.objects.filter(pk__in=[t.pk for t in tasks]).update(queued_at=old)

    first = sweep(using=state_db("default"))
    second = sweep(using=state_db("default"))

    assert first is not None and first.republished == 3
    assert second is not None and second.republished == 0
    assert depth("batch.examples.noop") == 3
    assert all(t.queued_at > old for t in BatchTask.objects.filter(pk__in=[t.pk for t in tasks]))


def test_waiting_messages_are_not_duplicated(settings) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "REPUBLISH_AFTER": 1}
    tasks = BatchTask.submit_many("examples.noop", [{}] * 3)
    old = timezone.now() - timedelta(seconds=5)
    BatchTask.objects.filter(pk__in=[t.pk for t in tasks]).update(queued_at=old)

    report = sweep(using=state_db("default"))

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

    assert "Purged 1 finished task(s)." in out.getvalue()
    assert set(BatchTask.objects.values_list("pk", flat=True)) == {recent.pk, waiting.pk}


def test_silent_workers_are_marked_offline() -> None:
    register_worker("quiet@host", queues=[QUEUE], concurrency=2, using="default")
    register_worker("chatty@host", queues=[QUEUE], concurrency=2, using="default")
    BatchWorker.objects.filter(name="quiet@host").update(
        last_seen_at=timezone.now() - timedelta(minutes=5)
    )

    out = StringIO()
    call_command("batchtasks", "sweep", stdout=out)

    states = dict(BatchWorker.objects.values_list("name", "state"))
    assert states == {"quiet@host": WorkerState.OFFLINE, "chatty@host": WorkerState.ONLINE}
    assert "offline=1" in out.getvalue()


def test_one_sweeper_at_a_time() -> None:
    with cluster_lock(state_db("default")) as mine:
        assert mine
        other = connection.copy("other")
        try:
            with other.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_try_advisory_lock(%s)",
                    [__import__("batchtasks.sweeper").sweeper.LOCK_KEY],
                )
                assert cursor.fetchone()[0] is False
        finally:
            other.close()


def test_retry_runs_a_failed_task_again_as_its_next_attempt() -> None:
    task = running_task()
    transitions.finish(
        task.pk, 1, transitions.Outcome(TaskState.FAILED, error_type="X"), using="default"
    )

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
            connection.close()
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
    from batchtasks.worker import WorkerAgent

    define_sleep = BatchTaskDefinition.objects.filter(pk=get_definition("examples.sleep").pk)
    define_sleep.update(timeout=60, max_attempts=2)
    overran, vanished = BatchTask.submit_many("examples.sleep", [{}, {}])
    for task in (overran, vanished):
        assert transitions.claim(task.pk, worker="w@x", lease_seconds=30, using="default")
    BatchTask.objects.filter(pk=overran.pk).update(
        started_at=timezone.now() - timedelta(seconds=61)
    )

    # This process holds no Celery requests: whatever the database says w@x runs is lost.
    WorkerAgent(hostname="w@x", queues=[QUEUE]).heartbeat()

    overran.refresh_from_db()
    vanished.refresh_from_db()
    timed_out = BatchTaskAttempt.objects.get(task=overran)
    assert timed_out.error_type == "billiard.exceptions.TimeLimitExceeded"
    assert "hard time limit of 60 s exceeded; worker w@x stopped it" in timed_out.error_message
    assert overran.state == TaskState.NEW and overran.run_after > timezone.now()  # backoff
    lost = BatchTaskAttempt.objects.get(task=vanished)
    assert lost.error_type == "billiard.exceptions.WorkerLostError"
    assert vanished.state == TaskState.QUEUED and vanished.attempt == 2  # again at once
