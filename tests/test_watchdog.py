"""The inactivity watchdog of inline runs, with real workers: the heartbeat stops a plugin
that reports no progress for longer than its type's ``inactivity_timeout``."""

from __future__ import annotations

import pytest

from batchtasks import BatchTask, TaskState
from batchtasks.models import BatchTaskDefinition
from tests.test_recovery import FAST
from tests.test_workers import wait_final

pytestmark = pytest.mark.worker


def test_an_inline_plugin_silent_past_its_inactivity_timeout_fails(start_worker) -> None:
    start_worker("w", ["batch.examples.silent"], concurrency=1, env=FAST)
    task = BatchTask.submit("examples.silent", {"seconds": 60})

    (task,) = wait_final(task, timeout=30)

    assert task.state == TaskState.FAILED
    assert task.error.type == "batchtasks.InactivityTimeout"
    assert "inactivity_timeout" in task.error.message
    assert (task.finished_at - task.started_at).total_seconds() < 30
    # Stopped inside the plugin, which unwound: the same process takes the next task.
    (nxt,) = wait_final(BatchTask.submit("examples.silent", {"seconds": 0.1}))
    assert (nxt.state, nxt.worker_pid) == (TaskState.SUCCEEDED, task.worker_pid)


def test_an_inactivity_timeout_is_a_failure_that_runs_again(start_worker) -> None:
    BatchTaskDefinition.objects.filter(name="examples.silent").update(max_attempts=2)
    start_worker("w", ["batch.examples.silent"], concurrency=1, env=FAST)

    (task,) = wait_final(BatchTask.submit("examples.silent", {"seconds": 60}), timeout=60)

    assert (task.state, task.attempt) == (TaskState.FAILED, 2)
    assert [a.error_type for a in task.attempts.order_by("number")] == [
        "batchtasks.InactivityTimeout"
    ] * 2


def test_a_plugin_reporting_progress_more_often_than_the_limit_runs_to_its_end(
    start_worker,
) -> None:
    BatchTaskDefinition.objects.filter(name="examples.progress").update(inactivity_timeout=1)
    start_worker("w", ["batch.examples.progress"], concurrency=1, env=FAST)

    (task,) = wait_final(BatchTask.submit("examples.progress", {"steps": 10, "delay": 0.3}))

    assert task.state == TaskState.SUCCEEDED, task.error
