"""Guarded state writes: a write that does not apply says so and changes nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest

from batchtasks import BatchTask, TaskState, transitions
from batchtasks.models import BatchTaskAttempt
from batchtasks.transitions import Outcome

pytestmark = pytest.mark.django_db


def queued_task() -> BatchTask:
    task = BatchTask.submit("examples.noop", {"x": 1})
    BatchTask.objects.filter(pk=task.pk).update(state=TaskState.QUEUED, queue="batch.examples.noop")
    return task


def claim(task: BatchTask) -> transitions.Claim | None:
    return transitions.claim(task.pk, worker="w@host", lease_seconds=30, using="default")


def test_claim_takes_a_queued_task_once() -> None:
    task = queued_task()

    first = claim(task)
    second = claim(task)

    assert first is not None and second is None
    assert (first.attempt, first.queue, first.codec) == (1, "batch.examples.noop", "json")
    assert first.data == b'{"x":1}'
    task.refresh_from_db()
    assert (task.state, task.worker) == (TaskState.RUNNING, "w@host")
    assert task.started_at is not None and task.lease_expires_at > task.started_at


def new_task() -> BatchTask:
    task = BatchTask.submit("examples.noop", run_after=timedelta(hours=1))
    assert task.state == TaskState.NEW
    return task


def test_a_new_or_cancelled_task_cannot_be_claimed() -> None:
    fresh = new_task()
    cancelled = queued_task()
    cancelled.cancel()

    assert claim(fresh) is None
    assert claim(cancelled) is None


def test_finish_applies_once_and_writes_one_attempt() -> None:
    task = queued_task()
    c = claim(task)
    assert c is not None
    done = Outcome(TaskState.SUCCEEDED, result={"rows": 3}, progress=(100, "done"))

    assert transitions.finish(task.pk, c.attempt, done, using="default")
    assert not transitions.finish(task.pk, c.attempt, Outcome(TaskState.FAILED), using="default")

    task.refresh_from_db()
    assert (task.state, task.result, task.progress_message) == ("succeeded", {"rows": 3}, "done")
    assert task.lease_expires_at is None
    attempt = BatchTaskAttempt.objects.get(task=task)
    assert (attempt.number, attempt.outcome, attempt.worker) == (1, "succeeded", "w@host")


def test_finish_of_another_attempt_does_not_apply() -> None:
    task = queued_task()
    c = claim(task)
    assert c is not None

    assert not transitions.finish(
        task.pk, c.attempt + 1, Outcome(TaskState.FAILED), using="default"
    )
    task.refresh_from_db()
    assert task.state == TaskState.RUNNING


def test_finish_refuses_states_that_are_not_outcomes() -> None:
    with pytest.raises(ValueError):
        transitions.finish(1, 1, Outcome(TaskState.QUEUED), using="default")


def test_progress_is_written_only_while_running_and_reports_cancel() -> None:
    task = queued_task()
    assert transitions.record_progress(task.pk, 1, 10, "x", using="default") is None
    c = claim(task)
    assert c is not None

    assert transitions.record_progress(task.pk, 1, 40, "reading", using="default") is False
    task.cancel()
    assert transitions.record_progress(task.pk, 1, 50, "writing", using="default") is True
    task.refresh_from_db()
    assert (task.progress_percent, task.progress_message) == (50, "writing")


def test_cancel_stops_a_waiting_task_at_once_and_flags_a_running_one() -> None:
    waiting = new_task()
    running = queued_task()
    claim(running)

    assert waiting.cancel()
    assert running.cancel()
    assert not running.cancel()  # already asked

    assert (waiting.state, waiting.finished_at is not None) == (TaskState.CANCELLED, True)
    running.refresh_from_db()
    assert (running.state, running.cancel_requested) == (TaskState.RUNNING, True)


def test_a_finished_task_cannot_be_cancelled() -> None:
    task = queued_task()
    c = claim(task)
    assert c is not None
    transitions.finish(task.pk, c.attempt, Outcome(TaskState.SUCCEEDED), using="default")

    assert not task.cancel()
    assert task.state == TaskState.SUCCEEDED


def test_unqueue_only_moves_queued_tasks() -> None:
    task = queued_task()
    other = new_task()

    assert transitions.unqueue([task.pk, other.pk], using="default") == 1
    task.refresh_from_db()
    assert (task.state, task.queue, task.queued_at) == (TaskState.NEW, "", None)
