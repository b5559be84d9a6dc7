"""Trustworthy at every edge, with real workers: messages fenced by attempt, cancels that
hold their slot until the process is gone, cancels that survive a dead worker, lost runs,
skewed clocks and two workers with one name."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
from django.utils import timezone

from batchtasks import BatchTask, TaskState
from batchtasks.models import BatchTaskAttempt, BatchWorker, WorkerState
from batchtasks.transport.depth import queue_depth
from batchtasks.transport.publish import Run, publish
from tests import rabbitmq
from tests.conftest import runs_of, set_limit
from tests.test_recovery import FAST, define
from tests.test_workers import wait_final
from tests.workers import wait_for

pytestmark = pytest.mark.worker

SLEEP = ["batch.examples.sleep"]


def depth(queue: str) -> int:
    return queue_depth(queue)


def drained(worker, task: BatchTask, dropped: int) -> bool:
    """The queue is empty and the worker has dropped ``dropped`` messages of ``task``."""
    return depth(task.queue or "batch.examples.sleep") == 0 and (
        worker.log_count(f"message dropped task={task.pk} ") >= dropped
    )


def row(task: BatchTask) -> BatchTask:
    return BatchTask.objects.get(pk=task.pk)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_retry_after_a_cancel_while_queued_runs_once_as_attempt_2(
    start_worker, record_dir: Path
) -> None:
    task = BatchTask.submit("examples.sleep", {"seconds": 0.2, "record": True})
    assert row(task).state == TaskState.QUEUED  # its message waits in the broker
    assert task.cancel()
    assert task.retry()  # a second message, for attempt 2
    assert (row(task).state, row(task).attempt) == (TaskState.QUEUED, 2)

    w = start_worker("w", SLEEP, concurrency=1, env=FAST)
    (task,) = wait_final(task)
    wait_for(lambda: drained(w, task, dropped=1))  # attempt 1's message ran nothing
    time.sleep(1.5)  # a few heartbeats: nothing may call the run lost now

    task.refresh_from_db()
    assert (task.state, task.attempt, task.lost_runs, task.error) == (
        TaskState.SUCCEEDED,
        2,
        0,
        None,
    )
    assert len(runs_of(record_dir, task.pk)) == 1
    outcomes = list(BatchTaskAttempt.objects.filter(task=task).values_list("number", "outcome"))
    assert outcomes == [(2, "succeeded")]
    assert f"message dropped task={task.pk} attempt=1 " in w.log()


def test_messages_for_other_attempts_run_nothing(start_worker, record_dir: Path) -> None:
    task = BatchTask.submit("examples.sleep", {"seconds": 0.2, "record": True})
    task.cancel()
    task.retry()
    queue = row(task).queue
    publish(queue, [Run(task.pk, 1), Run(task.pk, 3), Run(task.pk, 1)])

    w = start_worker("w", SLEEP, concurrency=2, env=FAST)
    (task,) = wait_final(task)
    wait_for(lambda: drained(w, task, dropped=4))

    assert (task.state, task.attempt) == (TaskState.SUCCEEDED, 2)
    assert len(runs_of(record_dir, task.pk)) == 1
    assert w.log_count(f"message dropped task={task.pk} attempt=3 ") == 1


def test_a_cancelled_task_that_ignores_sigterm_keeps_its_slot_until_its_process_is_gone(
    start_worker, record_dir: Path
) -> None:
    set_limit("examples.sleep", 1)
    env = {**FAST, "BATCHTASKS_CANCEL_GRACE": "1", "BATCHTASKS_KILL_GRACE": "1"}
    start_worker("w", SLEEP, concurrency=2, env=env)  # room for both: only the limit holds
    stubborn = BatchTask.submit(
        "examples.sleep",
        {"seconds": 60, "cooperate": False, "ignore_sigterm": True, "record": True},
    )
    waiting = BatchTask.submit("examples.sleep", {"seconds": 0.3, "record": True})
    wait_for(lambda: len(runs_of(record_dir, stubborn.pk)) == 1)
    pid = runs_of(record_dir, stubborn.pk)[0][0]

    assert stubborn.cancel()
    overlaps = []
    while row(waiting).state not in (TaskState.SUCCEEDED, TaskState.FAILED):
        first_alive = alive(pid)
        second_started = bool(runs_of(record_dir, waiting.pk))
        if first_alive and (second_started or row(stubborn).state != TaskState.RUNNING):
            overlaps.append((time.monotonic(), row(stubborn).state, second_started))
        time.sleep(0.005)

    assert overlaps == [], "the slot was given away while the first process still ran"
    stubborn, waiting = wait_final(stubborn, waiting)
    assert (stubborn.state, stubborn.error.type) == (TaskState.CANCELLED, "batchtasks.Stopped")
    first = runs_of(record_dir, stubborn.pk)
    assert len(first) == 1 and first[0][2] is None, "the first never reached its end"
    assert waiting.state == TaskState.SUCCEEDED
    assert runs_of(record_dir, waiting.pk)[0][1] > first[0][1]


def test_a_sigterm_stops_a_plugin_that_never_checks_for_cancel(
    start_worker, record_dir: Path
) -> None:
    env = {**FAST, "BATCHTASKS_CANCEL_GRACE": "1"}
    w = start_worker("w", SLEEP, concurrency=1, env=env)
    task = BatchTask.submit("examples.sleep", {"seconds": 60, "cooperate": False, "record": True})
    wait_for(lambda: runs_of(record_dir, task.pk))
    pid = runs_of(record_dir, task.pk)[0][0]

    assert task.cancel()
    (task,) = wait_final(task, timeout=20)

    # Stopped inside the plugin, which unwound: its process lives on and takes the next.
    assert (task.state, task.error.type) == (TaskState.CANCELLED, "batchtasks.Stopped")
    assert "stopped by its worker" in task.error.message
    (nxt,) = wait_final(BatchTask.submit("examples.sleep", {"seconds": 0.1, "record": True}))
    assert nxt.state == TaskState.SUCCEEDED
    assert runs_of(record_dir, nxt.pk)[0][0] == pid
    assert "signal=SIGKILL" not in w.log()


def test_a_cancel_survives_the_death_of_the_worker(start_worker, record_dir: Path) -> None:
    define("examples.sleep", max_attempts=3)
    env = {**FAST, "BATCHTASKS_CANCEL_GRACE": "60"}  # the worker has no time to act on it
    a = start_worker("a", SLEEP, concurrency=1, env=env)
    task = BatchTask.submit("examples.sleep", {"seconds": 30, "cooperate": False, "record": True})
    wait_for(lambda: runs_of(record_dir, task.pk))

    assert task.cancel()
    a.kill()
    start_worker("b", SLEEP, concurrency=1, env=env)
    wait_for(lambda: row(task).state == TaskState.CANCELLED, timeout=30)
    time.sleep(2)  # several sweeps and dispatch passes of b

    task.refresh_from_db()
    assert (task.state, task.attempt) == (TaskState.CANCELLED, 1)
    assert len(runs_of(record_dir, task.pk)) == 1, "it must never start again"
    assert list(BatchTaskAttempt.objects.filter(task=task).values_list("outcome")) == [("lost",)]


def test_a_lost_run_runs_again_even_with_one_attempt_and_fails_past_max_lost_runs(
    start_worker, record_dir: Path
) -> None:
    a = start_worker("a", SLEEP, concurrency=1, env=FAST)
    task = BatchTask.submit("examples.sleep", {"seconds": 2, "record": True})
    wait_for(lambda: runs_of(record_dir, task.pk))

    a.kill()
    a.start()  # same name, new boot: it gives back what its dead boot held at once
    (task,) = wait_final(task, timeout=30)

    assert (task.state, task.attempt, task.lost_runs) == (TaskState.SUCCEEDED, 2, 1)
    assert len(runs_of(record_dir, task.pk)) == 2

    doomed = BatchTask.submit("examples.sleep", {"seconds": 60, "record": True})
    for kill in range(1, 5):
        wait_for(lambda n=kill: len(runs_of(record_dir, doomed.pk)) == n, timeout=30)
        a.kill()
        a.start()
    (doomed,) = wait_final(doomed, timeout=30)

    assert (doomed.state, doomed.attempt, doomed.lost_runs) == (TaskState.FAILED, 4, 3)
    assert doomed.error.type == "billiard.exceptions.WorkerLostError"
    assert a.hostname in doomed.error.message
    outcomes = BatchTaskAttempt.objects.filter(task=doomed).values_list("outcome", flat=True)
    assert list(outcomes) == ["lost"] * 4
    assert len(runs_of(record_dir, doomed.pk)) == 4


def test_workers_with_skewed_clocks_neither_lose_nor_repeat_work(
    start_worker, record_dir: Path
) -> None:
    start_worker("plain", SLEEP, concurrency=2, env=FAST)
    start_worker("ahead", SLEEP, concurrency=2, env={**FAST, "BATCHTASKS_TEST_CLOCK_SKEW": "3600"})
    start_worker(
        "behind", SLEEP, concurrency=2, env={**FAST, "BATCHTASKS_TEST_CLOCK_SKEW": "-3600"}
    )
    tasks = BatchTask.submit_many("examples.sleep", [{"seconds": 1.5, "record": True}] * 12)
    due = timezone.now() + timedelta(seconds=3)
    delayed = BatchTask.submit("examples.sleep", {"seconds": 0, "record": True}, run_after=due)

    done = wait_final(*tasks, delayed, timeout=90)

    assert {t.state for t in done} == {TaskState.SUCCEEDED}
    assert {t.attempt for t in done} == {1}
    assert all(len(runs_of(record_dir, t.pk)) == 1 for t in done)
    assert not BatchTaskAttempt.objects.exclude(outcome="succeeded").exists()
    assert len({t.worker.partition("@")[0] for t in done}) == 3, "all three took work"
    delayed = done[-1]
    assert delayed.started_at >= delayed.run_after  # never early, whoever's clock


@pytest.mark.skipif(
    rabbitmq.in_use(),
    reason="RabbitMQ refuses a second worker of one node name: its remote-control queue is "
    "exclusive to one connection",
)
def test_two_workers_with_one_node_name_keep_their_own_attempts(
    start_worker, record_dir: Path
) -> None:
    first = start_worker("twin", SLEEP, concurrency=2, env=FAST)
    second = start_worker("twin", SLEEP, concurrency=2, env=FAST)
    tasks = BatchTask.submit_many("examples.sleep", [{"seconds": 1.5, "record": True}] * 8)

    done = wait_final(*tasks, timeout=60)

    assert {t.state for t in done} == {TaskState.SUCCEEDED}
    assert all(len(runs_of(record_dir, t.pk)) == 1 for t in done)
    assert not BatchTaskAttempt.objects.exclude(outcome="succeeded").exists()
    assert len({t.worker_instance for t in done}) == 2, "both worked"
    boots = BatchWorker.objects.filter(name=first.hostname, state=WorkerState.ONLINE)
    assert boots.count() == 2
    assert set(boots.values_list("pid", flat=True)) == {first.pid, second.pid}


def test_a_run_whose_lease_was_lost_is_stopped_by_its_own_worker(
    start_worker, record_dir: Path
) -> None:
    # Both are up before the task starts: the one that runs it is frozen a moment later,
    # not after the other's start-up (seconds on a busy machine, near the task's end).
    workers = {
        w.hostname.partition("@")[0]: w
        for w in (
            start_worker("a", SLEEP, concurrency=1, env=FAST),
            start_worker("b", SLEEP, concurrency=1, env=FAST),
        )
    }
    task = BatchTask.submit("examples.sleep", {"seconds": 8, "cooperate": False, "record": True})
    wait_for(lambda: runs_of(record_dir, task.pk))
    name = row(task).worker.partition("@")[0]
    a, b = workers[name], workers[next(n for n in workers if n != name)]

    os.kill(a.pid, signal.SIGSTOP)  # a's main process freezes; its pool process runs on
    try:
        wait_for(lambda: row(task).attempt == 2, timeout=30)  # b took it over
    finally:
        os.kill(a.pid, signal.SIGCONT)
    # Once thawed, whichever comes first stops it: the agent's local thread, which knows
    # that the lease ran out unrenewed (``worker.fencing``), or the heartbeat, which
    # reads that it was lost.
    stops = ("reason=fenced signal=SIGTERM", "reason=lease lost signal=SIGTERM")
    wait_for(lambda: any(stop in a.log() for stop in stops), timeout=15)
    (task,) = wait_final(task, timeout=30)

    first, second = runs_of(record_dir, task.pk)
    assert first[2] is None, "the run that lost its lease was stopped, not left running"
    assert second[2] is not None
    assert (task.state, task.attempt, task.worker) == ("succeeded", 2, b.hostname)
    outcomes = BatchTaskAttempt.objects.filter(task=task).values_list("outcome", "error_type")
    assert list(outcomes) == [("lost", "batchtasks.LeaseExpired"), ("succeeded", "")]
    if stops[1] in a.log():  # a fenced run writes nothing; this one tried, and was refused
        assert f"outcome not recorded task={task.pk} attempt=1 reason=no-longer-ours" in a.log()
