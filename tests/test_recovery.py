"""Nothing lost, nothing stuck: real workers killed, timed out, cancelled and restarted."""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.utils import timezone

from batchtasks import BatchTask, TaskState
from batchtasks.models import BatchTaskAttempt, BatchTaskDefinition, BatchWorker, WorkerState
from batchtasks.services.definitions import get_definition
from tests.conftest import runs_of
from tests.test_workers import wait_final
from tests.workers import wait_for

pytestmark = pytest.mark.worker

SLEEP = ["batch.examples.sleep"]
#: Short leases and beats, so that recovery happens within a test's patience.
FAST = {
    "BATCHTASKS_LEASE_SECONDS": "4",
    "BATCHTASKS_HEARTBEAT_SECONDS": "0.5",
    "BATCHTASKS_SWEEP_INTERVAL": "0.5",
    "BATCHTASKS_DISPATCH_INTERVAL": "0.5",
    "BATCHTASKS_CANCEL_GRACE": "2",
    "BATCHTASKS_REPUBLISH_AFTER": "2",
    "BATCHTASKS_PROGRESS_INTERVAL": "0.2",
}


def define(type_name: str, **values: Any) -> None:
    BatchTaskDefinition.objects.filter(pk=get_definition(type_name).pk).update(**values)


def state_of(task: BatchTask) -> str:
    return BatchTask.objects.values_list("state", flat=True).get(pk=task.pk)


def running_on(task: BatchTask, prefix: str) -> bool:
    row = BatchTask.objects.values_list("state", "worker").get(pk=task.pk)
    return row[0] == TaskState.RUNNING and row[1].startswith(prefix)


def test_a_killed_workers_task_runs_again_on_another_worker(start_worker) -> None:
    a = start_worker("a", SLEEP, concurrency=1, env=FAST)
    task = BatchTask.submit("examples.sleep", {"seconds": 30})
    wait_for(lambda: running_on(task, "a@"))
    start_worker("b", SLEEP, concurrency=1, env=FAST)

    a.kill()
    killed_at = timezone.now()
    wait_for(lambda: running_on(task, "b@"), timeout=30)

    task.refresh_from_db()
    assert (task.attempt, task.lost_runs) == (2, 1)  # max_attempts=1: a lost run is free
    lost = BatchTaskAttempt.objects.get(task=task, number=1)
    # b is on the same machine: it sees a's process is gone, without waiting for the lease.
    assert (lost.outcome, lost.error_type) == ("lost", "billiard.exceptions.WorkerLostError")
    assert f"worker {a.hostname} (pid {a.pid})" in lost.error_message
    assert task.started_at > killed_at


def test_a_restarted_worker_gives_back_what_it_held_at_once(start_worker) -> None:
    define("examples.sleep", max_attempts=2)
    a = start_worker("a", SLEEP, concurrency=1, env={**FAST, "BATCHTASKS_LEASE_SECONDS": "600"})
    task = BatchTask.submit("examples.sleep", {"seconds": 2})
    wait_for(lambda: running_on(task, "a@"))
    # Registered: RabbitMQ delivers fast enough for the kill to come before that.
    wait_for(lambda: BatchWorker.objects.filter(pid=a.pid, state=WorkerState.ONLINE).exists())

    a.kill()
    a.start()  # same node name: its first heartbeat finds the attempt nobody holds

    (task,) = wait_final(task, timeout=30)
    assert (task.state, task.attempt) == (TaskState.SUCCEEDED, 2)
    assert BatchTaskAttempt.objects.get(task=task, number=1).error_type.endswith("WorkerLostError")


def test_a_hard_timeout_fails_the_task_and_the_worker_takes_the_next(start_worker) -> None:
    define("examples.sleep", timeout=1)
    w = start_worker("w", SLEEP, concurrency=1, env=FAST)
    stuck = BatchTask.submit("examples.sleep", {"seconds": 30, "cooperate": False})
    after = BatchTask.submit("examples.sleep", {"seconds": 0.1})

    stuck, after = wait_final(stuck, after, timeout=30)

    assert stuck.state == TaskState.FAILED
    assert stuck.error.type == "billiard.exceptions.TimeLimitExceeded"
    assert "hard time limit of 1 s exceeded" in stuck.error.message
    assert (after.state, after.worker) == (TaskState.SUCCEEDED, w.hostname)


def test_a_soft_timeout_reaches_the_plugin(start_worker) -> None:
    define("examples.sleep", timeout=10, soft_timeout=1)
    start_worker("w", SLEEP, concurrency=1, env=FAST)

    (task,) = wait_final(BatchTask.submit("examples.sleep", {"seconds": 5, "catch_soft": True}))

    assert task.state == TaskState.SUCCEEDED
    assert task.result["soft_timeout"] is True
    assert task.result["end"] - task.result["start"] < 5


def test_a_failure_retries_with_backoff_and_succeeds_on_attempt_2(start_worker) -> None:
    start_worker("w", ["batch.examples.flaky"], concurrency=1, env=FAST)

    (task,) = wait_final(BatchTask.submit("examples.flaky", {"succeed_on": 2}), timeout=30)

    assert (task.state, task.attempt, task.result) == (TaskState.SUCCEEDED, 2, {"attempt": 2})
    first, second = BatchTaskAttempt.objects.filter(task=task).order_by("number")
    assert (first.outcome, first.error_type) == ("failed", "ConnectionError")
    assert second.outcome == "succeeded"
    waited = (second.started_at - first.finished_at).total_seconds()
    assert waited >= 0.5  # retry_backoff=1 with equal jitter: at least half of it


def test_a_permanent_failure_is_not_retried(start_worker) -> None:
    start_worker("w", ["batch.examples.flaky"], concurrency=1, env=FAST)

    (task,) = wait_final(BatchTask.submit("examples.flaky", {"permanent": True}))

    assert (task.state, task.attempt) == (TaskState.FAILED, 1)
    assert task.error.type == "batchtasks.core.exceptions.PermanentFailure"


def test_cancelling_a_running_cooperative_task(start_worker) -> None:
    w = start_worker("w", SLEEP, concurrency=1, env=FAST)
    task = BatchTask.submit("examples.sleep", {"seconds": 60})
    wait_for(lambda: state_of(task) == TaskState.RUNNING)

    assert task.cancel()
    wait_for(lambda: state_of(task) == TaskState.CANCELLED, timeout=5)

    task.refresh_from_db()
    assert task.attempts.get().outcome == "cancelled"
    (nxt,) = wait_final(BatchTask.submit("examples.sleep", {"seconds": 0.1}))
    assert (nxt.state, nxt.worker) == (TaskState.SUCCEEDED, w.hostname)


def test_a_cancelled_queued_task_never_starts_after_a_restart(start_worker, record_dir: Path):
    w = start_worker("w", SLEEP, concurrency=1, env=FAST)
    blocker = BatchTask.submit("examples.sleep", {"seconds": 2})
    victim = BatchTask.submit("examples.sleep", {"seconds": 0.1, "record": True})
    wait_for(lambda: state_of(blocker) == TaskState.RUNNING)
    assert state_of(victim) == TaskState.QUEUED  # its message is in the broker or the worker

    assert victim.cancel()
    w.kill()
    w.start()
    (blocker,) = wait_final(blocker, timeout=30)

    victim.refresh_from_db()
    assert victim.state == TaskState.CANCELLED
    assert victim.started_at is None and runs_of(record_dir, victim.pk) == []


def test_run_after_is_honoured_to_within_a_second(start_worker) -> None:
    start_worker("w", SLEEP, concurrency=1, env=FAST)
    due = timezone.now() + timedelta(seconds=2)

    (task,) = wait_final(BatchTask.submit("examples.sleep", {"seconds": 0}, run_after=due))

    assert due <= task.started_at < due + timedelta(seconds=1)


def test_delete_on_completion(start_worker) -> None:
    define("examples.sleep", retention=0)
    start_worker("w", SLEEP, concurrency=1, env=FAST)
    task = BatchTask.submit("examples.sleep", {"seconds": 0})
    marker = BatchTask.submit("examples.sleep", {"seconds": 0.2})

    wait_for(lambda: not BatchTask.objects.filter(pk__in=[task.pk, marker.pk]).exists())

    assert not BatchTaskAttempt.objects.filter(task_id__in=[task.pk, marker.pk]).exists()


def test_workers_register_beat_and_sign_off(start_worker) -> None:
    w = start_worker("w", SLEEP, concurrency=2, env=FAST)

    row = wait_for(lambda: BatchWorker.objects.filter(name=w.hostname).first())
    first_seen = row.last_seen_at
    wait_for(lambda: BatchWorker.objects.get(pk=row.pk).last_seen_at > first_seen)
    row.refresh_from_db()
    assert (row.state, row.queues, row.concurrency) == (WorkerState.ONLINE, SLEEP, 2)
    assert row.pid == w.process.pid and row.memory_bytes > 0

    w.stop()
    row.refresh_from_db()
    assert row.state == WorkerState.STOPPED


def test_a_killed_pool_process_costs_its_task_a_run_and_nothing_more(
    start_worker, record_dir: Path
) -> None:
    w = start_worker("w", SLEEP, concurrency=1, env=FAST)
    task = BatchTask.submit("examples.sleep", {"seconds": 3, "record": True})
    wait_for(lambda: len(runs_of(record_dir, task.pk)) == 1)

    os.kill(psutil.Process(w.process.pid).children()[0].pid, signal.SIGKILL)
    (task,) = wait_final(task, timeout=30)

    assert (task.state, task.attempt, task.lost_runs) == (TaskState.SUCCEEDED, 2, 1)
    attempts = BatchTaskAttempt.objects.filter(task=task).order_by("number")
    assert [(a.outcome, a.error_type) for a in attempts] == [
        ("lost", "billiard.exceptions.WorkerLostError"),
        ("succeeded", ""),
    ]
    runs = runs_of(record_dir, task.pk)
    assert len(runs) == 2 and runs[0][2] is None and runs[1][2] is not None
