"""Guarded state writes: a write that does not apply says so and changes nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection

from batchtasks import BatchTask, TaskState, transitions
from batchtasks.core.exceptions import UniqueKeyConflict
from batchtasks.core.states import ALLOWED_TRANSITIONS, WRITES, AttemptOutcome
from batchtasks.models import BatchTaskAttempt, BatchTaskDefinition
from batchtasks.services.definitions import get_definition
from batchtasks.transitions import Fence, Outcome

pytestmark = pytest.mark.django_db

ME = "a" * 32
OTHER = "b" * 32


def queued_task(**submit: object) -> BatchTask:
    task = BatchTask.submit("examples.noop", {"x": 1}, **submit)
    BatchTask.objects.filter(pk=task.pk).update(state=TaskState.QUEUED, queue="batch.examples.noop")
    return task


def claim(task: BatchTask, attempt: int = 1, instance: str = ME) -> transitions.Claim | None:
    return transitions.claim(
        Fence(task.pk, attempt, instance),
        worker="w@host",
        pid=4242,
        lease_seconds=30,
        using="default",
    )


def end(task: BatchTask, outcome: Outcome, attempt: int = 1, instance: str = ME):
    return transitions.end_attempt(Fence(task.pk, attempt, instance), outcome, using="default")


def db_now():
    with connection.cursor() as cursor:
        cursor.execute("SELECT STATEMENT_TIMESTAMP()")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_claims_go_on_after_the_connection_is_closed_and_opened_again() -> None:
    """Claims share one cursor per connection; a reconnect (as after a PostgreSQL
    restart) must not leave them on the closed connection's cursor."""
    first, second, third = queued_task(), queued_task(), queued_task()
    assert claim(first) is not None

    connection.close()
    connection.connect()
    claimed = claim(second)
    connection.close()  # a claim opens it again, as any statement does
    again = claim(third)

    assert claimed is not None and claimed.task_id == second.pk
    assert again is not None and again.task_id == third.pk
    states = BatchTask.objects.filter(pk__in=[first.pk, second.pk, third.pk])
    assert set(states.values_list("state", flat=True)) == {TaskState.RUNNING}


def test_claim_takes_a_queued_task_once_for_the_attempt_its_message_names() -> None:
    task = queued_task()

    assert claim(task, attempt=2) is None  # a message for another attempt claims nothing
    first = claim(task)
    second = claim(task)

    assert first is not None and second is None
    assert (first.attempt, first.queue, first.codec, first.lost_runs) == (
        1,
        "batch.examples.noop",
        "json",
        0,
    )
    assert first.data == b'{"x":1}'
    task.refresh_from_db()
    assert (task.state, task.worker, task.worker_instance, task.worker_pid) == (
        TaskState.RUNNING,
        "w@host",
        ME,
        4242,
    )
    assert task.lease_expires_at - task.started_at == timedelta(seconds=30)


def test_times_come_from_the_database_clock() -> None:
    before = db_now()
    task = queued_task()
    claim(task)
    task.refresh_from_db()

    assert before <= task.created_at <= task.started_at <= db_now()


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


def test_ending_applies_once_and_writes_one_attempt_row() -> None:
    task = queued_task()
    assert claim(task) is not None
    done = Outcome(AttemptOutcome.SUCCEEDED, result={"rows": 3}, progress=(100, "done"))

    ended = end(task, done)
    assert ended is not None and (ended.state, ended.queue) == ("succeeded", "batch.examples.noop")
    assert end(task, Outcome(AttemptOutcome.FAILED)) is None

    task.refresh_from_db()
    assert (task.state, task.result, task.progress_message) == ("succeeded", {"rows": 3}, "done")
    assert task.lease_expires_at is None and task.worker_pid is None
    attempt = BatchTaskAttempt.objects.get(task=task)
    assert (attempt.number, attempt.outcome, attempt.worker) == (1, "succeeded", "w@host")


def test_only_the_instance_holding_the_attempt_may_write() -> None:
    task = queued_task()
    assert claim(task) is not None
    fence = Fence(task.pk, 1, OTHER)

    assert transitions.record_progress(fence, 50, "x", using="default") is None
    assert transitions.renew_leases(OTHER, [(task.pk, 1)], 30, using="default") == []
    assert transitions.end_attempt(fence, Outcome(AttemptOutcome.FAILED), using="default") is None
    assert end(task, Outcome(AttemptOutcome.FAILED), attempt=2) is None

    task.refresh_from_db()
    assert (task.state, task.progress_percent) == (TaskState.RUNNING, 0)
    assert not BatchTaskAttempt.objects.filter(task=task).exists()


def test_unknown_outcomes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown outcome"):
        transitions.end_attempt(Fence(1, 1, ME), Outcome(TaskState.QUEUED), using="default")


def test_progress_is_written_only_while_running_and_reports_cancel() -> None:
    task = queued_task()
    fence = Fence(task.pk, 1, ME)
    assert transitions.record_progress(fence, 10, "x", using="default") is None
    assert claim(task) is not None

    assert transitions.record_progress(fence, 40, "reading", using="default") is False
    task.cancel()
    assert transitions.record_progress(fence, 50, "writing", using="default") is True
    task.refresh_from_db()
    assert (task.progress_percent, task.progress_message) == (50, "writing")


def test_a_failure_runs_again_after_its_backoff_while_attempts_remain() -> None:
    BatchTaskDefinition.objects.filter(pk=get_definition("examples.noop").pk).update(max_attempts=2)
    task = queued_task()
    claim(task)
    failed = Outcome(AttemptOutcome.FAILED, error_type="X", retry=True, retry_delay=60)

    ended = end(task, failed)

    assert ended is not None and ended.runs_again
    task.refresh_from_db()
    assert (task.state, task.attempt, task.queue, task.lost_runs) == ("new", 2, "", 0)
    assert task.run_after - db_now() > timedelta(seconds=55)
    BatchTask.objects.filter(pk=task.pk).update(state=TaskState.QUEUED)
    claim(task, attempt=2)
    assert end(task, failed, attempt=2).state == TaskState.FAILED  # the last attempt


def test_a_lost_run_runs_again_at_once_without_counting_until_max_lost_runs() -> None:
    BatchTaskDefinition.objects.filter(pk=get_definition("examples.noop").pk).update(
        max_attempts=1, max_lost_runs=2
    )
    task = queued_task()
    lost = Outcome(AttemptOutcome.LOST, error_type="W", error_message="worker w@h gone")
    states = []
    for attempt in (1, 2, 3):
        BatchTask.objects.filter(pk=task.pk).update(state=TaskState.QUEUED)
        assert claim(task, attempt=attempt) is not None
        states.append(end(task, lost, attempt=attempt).state)

    assert states == ["new", "new", "failed"]
    task.refresh_from_db()
    assert (task.attempt, task.lost_runs, task.error_message) == (3, 2, "worker w@h gone")
    outcomes = list(BatchTaskAttempt.objects.filter(task=task).values_list("outcome", flat=True))
    assert outcomes == ["lost", "lost", "lost"]


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome(AttemptOutcome.LOST, error_type="W"),
        Outcome(AttemptOutcome.FAILED, error_type="E", retry=True),
        Outcome(AttemptOutcome.FAILED, error_type="E"),
    ],
    ids=["lost", "failed-with-attempts-left", "failed"],
)
def test_a_cancel_requested_meanwhile_wins_over_running_again(outcome: Outcome) -> None:
    BatchTaskDefinition.objects.filter(pk=get_definition("examples.noop").pk).update(max_attempts=3)
    task = queued_task()
    claim(task)
    assert task.cancel()

    ended = end(task, outcome)

    assert ended is not None and ended.state == TaskState.CANCELLED
    task.refresh_from_db()
    assert task.finished_at is not None and task.attempt == 1


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
    claim(task)
    end(task, Outcome(AttemptOutcome.SUCCEEDED))

    assert not task.cancel()
    assert task.state == TaskState.SUCCEEDED


def test_unqueue_only_moves_queued_attempts() -> None:
    task = queued_task()
    other = new_task()

    assert transitions.unqueue([(task.pk, 2), (other.pk, 1)], using="default") == 0
    assert transitions.unqueue([(task.pk, 1), (other.pk, 1)], using="default") == 1
    task.refresh_from_db()
    assert (task.state, task.queue, task.queued_at) == (TaskState.NEW, "", None)


def test_retry_while_another_task_holds_the_unique_key_is_a_clear_error() -> None:
    first = queued_task(unique_key="nightly")
    first.cancel()
    BatchTask.submit("examples.noop", unique_key="nightly")

    with pytest.raises(UniqueKeyConflict, match="holds its unique_key"):
        first.retry()

    first.refresh_from_db()
    assert first.state == TaskState.CANCELLED
    assert BatchTask.objects.count() == 2  # the caller's transaction is still usable


def test_the_table_of_writes_is_the_state_machine() -> None:
    assert ALLOWED_TRANSITIONS[TaskState.SUCCEEDED] == frozenset()
    assert ALLOWED_TRANSITIONS[TaskState.SKIPPED] == frozenset()
    assert ALLOWED_TRANSITIONS[TaskState.NEW] == {"queued", "cancelled", "skipped"}
    assert ALLOWED_TRANSITIONS[TaskState.RUNNING] == {"succeeded", "failed", "cancelled", "new"}
    assert WRITES["claim"].sources == (TaskState.QUEUED,)


def test_a_write_outside_the_table_does_not_apply() -> None:
    task = queued_task()
    claim(task)
    end(task, Outcome(AttemptOutcome.SUCCEEDED))

    assert not transitions.set_priority(task.pk, 50, using="default")
    assert not task.retry()  # succeeded is final
    assert transitions.admit([task.pk], queue="q", using="default") == []
    task.refresh_from_db()
    assert (task.state, task.priority) == (TaskState.SUCCEEDED, 0)


def test_a_delay_counts_from_the_database_clock() -> None:
    task = BatchTask.submit("examples.noop", run_after=timedelta(seconds=10))
    task.refresh_from_db()
    assert task.run_after - task.created_at == timedelta(seconds=10)
