"""Acceptance tests: real ``celery worker`` processes on PostgreSQL and Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import connections, transaction
from django_celery_results.models import TaskResult

from batchtasks import BatchTask, Priority, TaskState
from batchtasks.models import BatchTaskAttempt
from batchtasks.transport.publish import Run, publish
from tests.conftest import runs_of, set_limit
from tests.taskdb import TASK_DB
from tests.workers import wait_for

pytestmark = pytest.mark.worker

FINAL = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)


def wait_final(*tasks: BatchTask, timeout: float = 60.0) -> list[BatchTask]:
    ids = [t.pk for t in tasks]

    def done() -> bool:
        return BatchTask.objects.filter(pk__in=ids, state__in=FINAL).count() == len(ids)

    wait_for(done, timeout=timeout)
    by_id = BatchTask.objects.in_bulk(ids)
    return [by_id[pk] for pk in ids]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def test_success_saves_result_and_timestamps(start_worker, record_dir: Path) -> None:
    start_worker()
    task = BatchTask.submit("examples.sleep", {"seconds": 0.2, "record": True})

    (task,) = wait_final(task)

    assert task.state == TaskState.SUCCEEDED
    assert task.state_code == 4
    assert task.result["slept"] == 0.2
    assert task.created_at <= task.queued_at <= task.started_at <= task.finished_at
    assert (task.finished_at - task.started_at).total_seconds() >= 0.2
    assert task.worker.startswith("w1@")
    assert task.progress_percent == 100
    assert len(runs_of(record_dir, task.pk)) == 1
    attempt = BatchTaskAttempt.objects.get(task=task)
    assert (attempt.number, attempt.outcome, attempt.worker) == (1, "succeeded", task.worker)
    assert not TaskResult.objects.exists(), "the outcome must not be written twice"


def test_failure_saves_error_type_and_message(start_worker) -> None:
    start_worker()
    task = BatchTask.submit("examples.fail", {"message": "the printer is on fire"})

    (task,) = wait_final(task)

    assert task.state == TaskState.FAILED
    assert task.state_code == 5
    assert task.error.type == "ValueError"
    assert task.error.message == "the printer is on fire"
    assert "Traceback" in task.error.traceback and "plugins/examples.py" in task.error.traceback
    assert task.result is None
    assert task.attempts.get().outcome == "failed"


@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "inside-a-transaction"])
def test_progress_is_visible_while_running(start_worker, atomic: bool) -> None:
    start_worker()
    task = BatchTask.submit("examples.progress", {"steps": 10, "delay": 0.3, "atomic": atomic})
    seen: set[tuple[str, int, str]] = set()

    def finished() -> bool:
        row = BatchTask.objects.values_list("state", "progress_percent", "progress_message").get(
            pk=task.pk
        )
        seen.add(row)
        return row[0] in FINAL

    wait_for(finished, timeout=30, interval=0.05)

    midway = [(p, m) for s, p, m in seen if s == TaskState.RUNNING and 0 < p < 100]
    assert midway, f"no progress seen mid-run: {sorted(seen)}"
    assert all(m.startswith("step ") for _, m in midway)
    task.refresh_from_db()
    assert (task.state, task.progress_percent) == (TaskState.SUCCEEDED, 100)
    assert task.progress_message == "step 10 of 10"


def test_type_limit_holds_across_three_workers(start_worker, record_dir: Path) -> None:
    set_limit("examples.sleep", 2)
    for name in ("a", "b", "c"):
        start_worker(name, ["batch.examples.sleep"], concurrency=3, wait=False)
    params = [{"seconds": 0.4, "record": True} for _ in range(10)]
    tasks = BatchTask.submit_many("examples.sleep", params)

    running_counts = []

    def finished() -> bool:
        states = list(
            BatchTask.objects.filter(pk__in=[t.pk for t in tasks]).values_list("state", flat=True)
        )
        running_counts.append(states.count(TaskState.RUNNING))
        return all(s in FINAL for s in states)

    wait_for(finished, timeout=90, interval=0.02)
    tasks = list(BatchTask.objects.filter(pk__in=[t.pk for t in tasks]))

    assert {t.state for t in tasks} == {TaskState.SUCCEEDED}
    assert len({t.worker for t in tasks}) >= 2, "the work should spread over the workers"
    rows = [(t.started_at.timestamp(), t.finished_at.timestamp()) for t in tasks]
    plugin_runs = [(s, e) for t in tasks for _, s, e in runs_of(record_dir, t.pk)]
    assert max_overlap(rows) == 2
    assert max_overlap(plugin_runs) == 2
    assert max(running_counts) <= 2


def test_priorities_order_the_backlog(start_worker, record_dir: Path) -> None:
    set_limit("examples.sleep", 1)
    start_worker(queues=["batch.examples.sleep"], concurrency=2)
    blocker = BatchTask.submit("examples.sleep", {"seconds": 1.0})
    wait_for(lambda: BatchTask.objects.get(pk=blocker.pk).state == TaskState.RUNNING)
    order = [
        ("low", Priority.UNIMPORTANT),
        ("normal-1", Priority.NORMAL),
        ("important", Priority.IMPORTANT),
        ("immediate", Priority.IMMEDIATE),
        ("normal-2", Priority.NORMAL),
        ("raised", 10),
    ]
    tasks = [
        BatchTask.submit("examples.sleep", {"seconds": 0.05}, priority=p, description=d)
        for d, p in order
    ]

    tasks = wait_final(*tasks)

    started = [t.description for t in sorted(tasks, key=lambda t: t.started_at)]
    assert started == ["immediate", "important", "raised", "normal-1", "normal-2", "low"]


def test_set_priority_moves_a_waiting_task(start_worker) -> None:
    set_limit("examples.sleep", 1)
    start_worker(queues=["batch.examples.sleep"])
    blocker = BatchTask.submit("examples.sleep", {"seconds": 1.0})
    wait_for(lambda: BatchTask.objects.get(pk=blocker.pk).state == TaskState.RUNNING)
    first = BatchTask.submit("examples.sleep", {"seconds": 0.05}, description="first")
    second = BatchTask.submit("examples.sleep", {"seconds": 0.05}, description="second")

    assert second.set_priority(Priority.IMMEDIATE)
    first, second = wait_final(first, second)

    assert second.started_at < first.started_at
    assert second.priority == Priority.IMMEDIATE


def test_fairness_lets_a_second_owner_in_before_the_backlog_drains(start_worker) -> None:
    users = get_user_model().objects
    alice = users.create_user("alice")
    bob = users.create_user("bob")
    set_limit("examples.sleep", 1)
    start_worker(queues=["batch.examples.sleep"])
    backlog = BatchTask.submit_many("examples.sleep", [{"seconds": 0.2}] * 12, owner=alice)
    wait_for(lambda: BatchTask.objects.filter(state=TaskState.RUNNING).exists())
    late = BatchTask.submit("examples.sleep", {"seconds": 0.2}, owner=bob)

    tasks = wait_final(late, *backlog)

    order = [t.owner_id for t in sorted(tasks, key=lambda t: t.started_at)]
    position = order.index(bob.pk)
    assert position <= 2, f"bob waited behind {position} of alice's tasks: {order}"
    assert order[position + 1 :].count(alice.pk) >= 8


def test_duplicate_and_stale_messages_run_nothing_twice(start_worker, record_dir: Path) -> None:
    w = start_worker(concurrency=3)
    task = BatchTask.submit("examples.sleep", {"seconds": 0.5, "record": True})
    task.refresh_from_db()
    copy = Run(task.pk, task.attempt)
    publish(task.queue, [copy] * 2)  # two more copies while it waits or runs

    (task,) = wait_final(task)
    publish(task.queue, [copy])  # a stale copy after it finished
    dropped = f"message dropped task={task.pk} attempt={task.attempt} "
    wait_for(lambda: w.log_count(dropped) == 3)  # every copy was taken and ran nothing

    assert len(runs_of(record_dir, task.pk)) == 1
    assert BatchTaskAttempt.objects.filter(task=task).count() == 1
    task.refresh_from_db()
    assert task.state == TaskState.SUCCEEDED


def test_rolled_back_submit_never_runs(start_worker, record_dir: Path) -> None:
    start_worker()

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        BatchTask.submit("examples.sleep", {"seconds": 0.1, "record": True})
        raise Abort
    proof = BatchTask.submit("examples.sleep", {"seconds": 1.5})  # outlives two dispatch ticks
    wait_final(proof)

    assert BatchTask.objects.count() == 1
    assert list(record_dir.iterdir()) == []


def test_throttled_progress_is_written_while_the_plugin_is_silent(start_worker) -> None:
    start_worker(env={"BATCHTASKS_PROGRESS_INTERVAL": "0.5"})
    # Three reports at once, then four silent seconds: two reports are held back.
    task = BatchTask.submit("examples.progress", {"steps": 3, "delay": 0, "silent_after": 4})
    seen: list[tuple[str, int, str]] = []

    def last_report_shown() -> bool:
        row = BatchTask.objects.values_list("state", "progress_percent", "progress_message")
        seen.append(row.get(pk=task.pk))
        return seen[-1][0] in FINAL or seen[-1][1:] == (100, "step 3 of 3")

    wait_for(last_report_shown, timeout=30, interval=0.05)

    assert seen[-1] == (TaskState.RUNNING, 100, "step 3 of 3"), seen[-5:]


def test_workers_survive_lost_database_connections(start_worker) -> None:
    set_limit("examples.sleep", 1)  # through the dispatcher, not only direct admission
    start_worker(queues=["batch.examples.sleep"])
    (first,) = wait_final(BatchTask.submit("examples.sleep", {"seconds": 0.1}))
    with connections[TASK_DB].cursor() as cursor:  # as a PostgreSQL restart would
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert cursor.rowcount >= 2

    tasks = wait_final(*(BatchTask.submit("examples.sleep", {"seconds": 0.1}) for _ in range(3)))

    assert first.state == TaskState.SUCCEEDED
    assert [t.state for t in tasks] == [TaskState.SUCCEEDED] * 3
