"""Time limits enforced per task by the worker's agent, inside messages of several tasks:
real workers on the real broker. The clock of each task starts when its plugin starts;
a task past its limit fails alone, and its neighbours run exactly once."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from batchtasks import BatchTask, TaskState
from batchtasks.core.states import AttemptOutcome
from batchtasks.services.batching import per_message
from batchtasks.services.leases import TIME_LIMIT
from batchtasks.transport.depth import queue_depth
from batchtasks.transport.publish import OUTER_LIMIT_GRACE, Run, celery_limits
from tests.conftest import runs_of
from tests.test_batching import QUICK, SLEEP, batched, outcomes
from tests.test_recovery import FAST, define
from tests.test_workers import wait_final
from tests.workers import wait_for

STUCK = {"seconds": 30, "record": True, "cooperate": False}
STUBBORN = {**STUCK, "ignore_sigterm": True}
QUICK_ENV = {**FAST, "BATCHTASKS_KILL_GRACE": "1"}


def once_each(tasks: list[BatchTask], record_dir: Path) -> None:
    """Each task succeeded at its first attempt, ran once, and was never a lost run."""
    for task in tasks:
        assert task.state == TaskState.SUCCEEDED, task.error
        assert outcomes(task) == [TaskState.SUCCEEDED]
        assert (task.attempt, task.lost_runs) == (1, 0)
        assert len(runs_of(record_dir, task.pk)) == 1


@pytest.mark.worker
def test_a_task_past_its_hard_limit_in_a_message_fails_alone_and_its_neighbours_run_once(
    start_worker, record_dir: Path
) -> None:
    define("examples.sleep", timeout=1)
    batched(per_message=5)
    tasks = BatchTask.submit_many("examples.sleep", [QUICK, QUICK, STUCK, QUICK, QUICK])
    assert queue_depth(SLEEP[0]) == 1  # a timed type shares messages
    start_worker("w", SLEEP, concurrency=1, env=QUICK_ENV)

    done = wait_final(*tasks, timeout=60)

    stuck = done[2]
    assert (stuck.state, stuck.error.type) == (TaskState.FAILED, TIME_LIMIT)
    assert "hard time limit of 1 s exceeded; worker w@" in stuck.error.message
    assert "plugins/examples.py" in stuck.error.traceback, "not raised inside the plugin"
    once_each(done[:2] + done[3:], record_dir)
    # It unwound: no kill, the same process ran the tasks behind it.
    [(pid, _, end)] = runs_of(record_dir, stuck.pk)
    assert end is None
    assert {runs_of(record_dir, t.pk)[0][0] for t in tasks} == {pid}


@pytest.mark.worker
def test_a_task_past_its_hard_limit_that_ignores_sigterm_is_killed_after_held_finishes(
    start_worker, record_dir: Path
) -> None:
    """The finishes of the tasks before it are held (a long completion window) when the
    kill is due: they are written first, so they never run again; the tasks behind it
    are given back and run once, in a fresh process."""
    define("examples.sleep", timeout=1)
    batched(per_message=5)
    tasks = BatchTask.submit_many("examples.sleep", [QUICK, QUICK, STUBBORN, QUICK, QUICK])
    assert queue_depth(SLEEP[0]) == 1
    env = {**QUICK_ENV, "BATCHTASKS_COMPLETION_WINDOW": "4"}
    start_worker("w", SLEEP, concurrency=1, env=env)

    done = wait_final(*tasks, timeout=60)

    stubborn = done[2]
    assert (stubborn.state, stubborn.error.type) == (TaskState.FAILED, TIME_LIMIT)
    assert "hard time limit of 1 s exceeded" in stubborn.error.message
    [(killed, _, end)] = runs_of(record_dir, stubborn.pk)
    assert end is None
    once_each(done[:2] + done[3:], record_dir)
    assert all(runs_of(record_dir, t.pk)[0][0] != killed for t in tasks[3:])


@pytest.mark.worker
def test_a_plugin_that_swallows_its_hard_limit_fails_all_the_same(
    start_worker, record_dir: Path
) -> None:
    define("examples.sleep", timeout=1)
    start_worker("w", SLEEP, concurrency=1, env=QUICK_ENV)

    (task,) = wait_final(BatchTask.submit("examples.sleep", {**STUCK, "swallow": True}))

    assert (task.state, task.error.type) == (TaskState.FAILED, TIME_LIMIT)
    assert task.result is None


@pytest.mark.worker
def test_a_soft_limit_in_a_message_raises_in_the_plugin_and_the_others_run_once(
    start_worker, record_dir: Path
) -> None:
    define("examples.sleep", timeout=20, soft_timeout=1)
    batched(per_message=4)
    catches = {"seconds": 10, "record": True, "catch_soft": True}
    lets_go = {"seconds": 10, "record": True}
    tasks = BatchTask.submit_many("examples.sleep", [QUICK, catches, lets_go, QUICK])
    assert queue_depth(SLEEP[0]) == 1
    start_worker("w", SLEEP, concurrency=1, env=QUICK_ENV)

    done = wait_final(*tasks, timeout=60)

    caught, let_go = done[1], done[2]
    assert caught.state == TaskState.SUCCEEDED and caught.result["soft_timeout"] is True
    assert caught.result["end"] - caught.result["start"] < 5
    assert let_go.state == TaskState.FAILED
    assert let_go.error.type == "billiard.exceptions.SoftTimeLimitExceeded"
    assert "plugins/examples.py" in let_go.error.traceback
    once_each([done[0], done[3]], record_dir)
    assert len({runs_of(record_dir, t.pk)[0][0] for t in tasks}) == 1  # nothing killed


@pytest.mark.worker
def test_a_task_waiting_behind_long_ones_is_not_timed_by_their_time(
    start_worker, record_dir: Path
) -> None:
    """Three runs of 1.2 s under a 2 s limit, one message: 3.6 s in all, each within."""
    define("examples.sleep", timeout=2)
    batched(per_message=3)
    tasks = BatchTask.submit_many("examples.sleep", [{"seconds": 1.2, "record": True}] * 3)
    assert queue_depth(SLEEP[0]) == 1
    start_worker("w", SLEEP, concurrency=1, env=QUICK_ENV)

    done = wait_final(*tasks, timeout=60)

    once_each(done, record_dir)
    runs = [runs_of(record_dir, t.pk)[0] for t in tasks]
    assert runs[2][2] - runs[0][1] > 2  # the message outlived one task's limit


@pytest.mark.worker
def test_a_timed_out_task_runs_again_and_fails_at_its_last_attempt(
    start_worker, record_dir: Path
) -> None:
    define("examples.sleep", timeout=1, max_attempts=2, retry_backoff=0)
    batched(per_message=2)
    stuck, quick = BatchTask.submit_many("examples.sleep", [STUCK, QUICK])
    start_worker("w", SLEEP, concurrency=1, env=QUICK_ENV)

    stuck, quick = wait_final(stuck, quick, timeout=60)

    assert (stuck.state, stuck.attempt) == (TaskState.FAILED, 2)
    assert [a.error_type for a in stuck.attempts.order_by("number")] == [TIME_LIMIT] * 2
    assert len(runs_of(record_dir, stuck.pk)) == 2
    once_each([quick], record_dir)


@pytest.mark.worker
def test_a_timed_task_alone_in_its_message_gets_the_same_outcome(start_worker) -> None:
    define("examples.sleep", timeout=1, soft_timeout=None)
    start_worker("w", SLEEP, concurrency=1, env=QUICK_ENV)
    task = BatchTask.submit("examples.sleep", STUBBORN)
    wait_for(lambda: BatchTask.objects.filter(pk=task.pk, state=TaskState.RUNNING).exists())

    (task,) = wait_final(task, timeout=60)

    assert (task.state, task.error.type) == (TaskState.FAILED, TIME_LIMIT)
    assert "hard time limit of 1 s exceeded" in task.error.message


def test_a_message_of_an_inline_type_carries_only_an_outer_celery_hard_limit(
    settings,
) -> None:
    settings.BATCHTASKS = {"KILL_GRACE": 5}
    inline = [Run(i, 1, 60, 30, "t", 3, limits_by_worker=True) for i in range(3)]
    assert celery_limits(inline) == (3 * 60 + 3 * 5 + OUTER_LIMIT_GRACE, None)
    soft_only = [Run(1, 1, None, 30, "t", limits_by_worker=True)]
    assert celery_limits(soft_only) == (None, None)
    isolated = [Run(1, 1, 60, 30, "t")]
    assert celery_limits(isolated) == (60, 30)


@pytest.mark.django_db
def test_timed_inline_types_share_messages_and_isolated_ones_do_not() -> None:
    class Definition:
        tasks_per_message = None
        timeout, soft_timeout = 60, 30
        run_seconds = 0.001
        isolation = "inline"

    assert per_message(Definition, 100, "q", using="default") > 1
    Definition.isolation = "process"
    assert per_message(Definition, 100, "q", using="default") == 1


@pytest.mark.worker
def test_a_timed_task_lost_with_its_process_runs_again_and_is_not_taken_for_a_time_out(
    start_worker, record_dir: Path
) -> None:
    """Its message was claimed longer ago than its limit, but it ran for less: a pool
    process killed under it is a lost run (it runs again), not a time-limit failure."""
    define("examples.sleep", timeout=2)
    batched(per_message=3)
    tasks = BatchTask.submit_many("examples.sleep", [{"seconds": 1.5, "record": True}] * 3)
    assert queue_depth(SLEEP[0]) == 1
    start_worker("w", SLEEP, concurrency=1, env=QUICK_ENV)
    [(pid, _, _)] = wait_for(lambda: runs_of(record_dir, tasks[2].pk), timeout=30)
    os.kill(pid, signal.SIGKILL)

    done = wait_final(*tasks, timeout=60)

    assert [t.state for t in done] == [TaskState.SUCCEEDED] * 3
    assert (done[2].attempt, done[2].lost_runs) == (2, 1)
    assert outcomes(done[2]) == [AttemptOutcome.LOST, TaskState.SUCCEEDED]
