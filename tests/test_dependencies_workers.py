"""Dependencies with real ``celery worker`` processes, and races between a parent's
final write and its child's submit."""

from __future__ import annotations

import threading

import pytest
from django.db import close_old_connections, connection, transaction

from batchtasks import BatchTask, TaskState, transitions
from batchtasks.core.states import FINAL_STATES, AttemptOutcome
from batchtasks.transitions import Fence, Outcome, Succeeded
from tests.workers import wait_for

ME = "a" * 32


def wait_final(*tasks: BatchTask, timeout: float = 60.0) -> list[BatchTask]:
    ids = [t.pk for t in tasks]

    def done() -> bool:
        return BatchTask.objects.filter(pk__in=ids, state__in=FINAL_STATES).count() == len(ids)

    wait_for(done, timeout=timeout)
    by_id = BatchTask.objects.in_bulk(ids)
    return [by_id[pk] for pk in ids]


@pytest.mark.worker
def test_a_child_of_two_parents_runs_after_both_and_reads_their_results(start_worker) -> None:
    start_worker()
    a = BatchTask.submit("examples.sleep", {"seconds": 0.3})
    b = BatchTask.submit("examples.flaky", {"succeed_on": 1})

    child = BatchTask.submit("examples.merge", depends_on=[a, b])

    child, a, b = wait_final(child, a, b)
    assert child.state == TaskState.SUCCEEDED
    assert child.result == {"parents": [[a.pk, a.result], [b.pk, {"attempt": 1}]]}
    assert child.started_at >= max(a.finished_at, b.finished_at)


@pytest.mark.worker
def test_a_parent_failing_after_retries_skips_child_and_grandchild(start_worker) -> None:
    start_worker()
    parent = BatchTask.submit("examples.flaky", {"succeed_on": 9})  # 3 attempts, all fail
    child = BatchTask.submit("examples.merge", depends_on=[parent])
    grandchild = BatchTask.submit("examples.merge", depends_on=[child])

    parent, child, grandchild = wait_final(parent, child, grandchild)

    assert (parent.state, parent.attempt) == (TaskState.FAILED, 3)
    assert (child.state, grandchild.state) == (TaskState.SKIPPED, TaskState.SKIPPED)
    assert f"parent task {parent.pk} ended failed" in child.error_message
    assert f"parent task {child.pk} ended skipped" in grandchild.error_message
    assert child.started_at is None and grandchild.started_at is None
    assert not child.attempts.exists()


@pytest.mark.worker
def test_on_parent_failure_run_runs_the_child(start_worker) -> None:
    start_worker()
    parent = BatchTask.submit("examples.fail", {"message": "no"})
    child = BatchTask.submit("examples.merge", depends_on=[parent], on_parent_failure="run")

    parent, child = wait_final(parent, child)

    assert (parent.state, child.state) == (TaskState.FAILED, TaskState.SUCCEEDED)
    assert child.result == {"parents": [[parent.pk, None]]}


@pytest.mark.worker
def test_group_then_runs_once_after_every_task_of_the_group(start_worker) -> None:
    start_worker(concurrency=2)
    group = BatchTask.submit_many("examples.sleep", [{"seconds": 0.05}] * 20)

    done = group.then("examples.merge", {"batch": 7})

    (done,) = wait_final(done)
    tasks = list(group.tasks())
    assert done.state == TaskState.SUCCEEDED and done.attempt == 1
    assert done.attempts.count() == 1
    assert [pk for pk, _ in done.result["parents"]] == [t.pk for t in group]
    assert done.started_at >= max(t.finished_at for t in tasks)


@pytest.mark.worker
def test_a_retried_parent_does_not_release_its_child_before_its_last_attempt(
    start_worker,
) -> None:
    start_worker()
    parent = BatchTask.submit("examples.flaky", {"succeed_on": 2})
    child = BatchTask.submit("examples.merge", depends_on=[parent])

    parent, child = wait_final(parent, child)

    assert (parent.state, parent.attempt) == (TaskState.SUCCEEDED, 2)
    assert child.state == TaskState.SUCCEEDED
    assert child.started_at >= parent.finished_at
    assert child.result == {"parents": [[parent.pk, {"attempt": 2}]]}


@pytest.mark.worker
def test_cancel_cascade_cancels_a_running_parents_waiting_descendants(start_worker) -> None:
    start_worker()
    parent = BatchTask.submit("examples.sleep", {"seconds": 30})
    child = BatchTask.submit("examples.merge", depends_on=[parent], on_parent_failure="run")
    grandchild = BatchTask.submit("examples.merge", depends_on=[child])
    wait_for(lambda: BatchTask.objects.get(pk=parent.pk).state == TaskState.RUNNING)

    assert parent.cancel(cascade=True)

    parent, child, grandchild = wait_final(parent, child, grandchild)
    assert [t.state for t in (parent, child, grandchild)] == [TaskState.CANCELLED] * 3


def _running(type_name: str = "examples.noop") -> BatchTask:
    task = BatchTask.submit(type_name, {})
    BatchTask.objects.filter(pk=task.pk).update(state=TaskState.QUEUED, queue="q")
    assert transitions.claim(
        Fence(task.pk, 1, ME), worker="w@host", pid=1, lease_seconds=30, using="default"
    )
    return task


def _end_in_thread(task: BatchTask, started: threading.Event) -> threading.Thread:
    def end() -> None:
        try:
            started.set()
            transitions.end_attempt(
                Fence(task.pk, 1, ME), Outcome(AttemptOutcome.SUCCEEDED), using="default"
            )
        finally:
            close_old_connections()
            connection.close()

    thread = threading.Thread(target=end)
    thread.start()
    return thread


def _blocked_on_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # else read once per transaction
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.django_db(transaction=True)
def test_a_parent_ending_while_its_child_is_submitted_releases_the_child(definitions) -> None:
    parent = _running()
    started = threading.Event()
    with transaction.atomic():
        child = BatchTask.submit("examples.noop", depends_on=[parent])
        thread = _end_in_thread(parent, started)  # waits for the lock on the parent's row
        started.wait()
        wait_for(_blocked_on_lock, timeout=10)
    thread.join(10)

    assert BatchTask.objects.get(pk=parent.pk).state == TaskState.SUCCEEDED
    child.refresh_from_db()
    assert (child.state, child.pending_parents) == (TaskState.NEW, 0)


@pytest.mark.django_db(transaction=True)
def test_a_child_submitted_while_its_parent_ends_sees_the_parent_final(definitions) -> None:
    parent = _running()
    done = threading.Event()
    result: list[BatchTask] = []

    def submit() -> None:
        try:
            result.append(BatchTask.submit("examples.noop", depends_on=[parent]))
        finally:
            done.set()
            connection.close()

    with transaction.atomic():  # the parent's final write, not committed yet
        transitions.end_attempt(
            Fence(parent.pk, 1, ME), Outcome(AttemptOutcome.SUCCEEDED), using="default"
        )
        thread = threading.Thread(target=submit)
        thread.start()
        wait_for(_blocked_on_lock, timeout=10)
    thread.join(10)

    (child,) = result
    child.refresh_from_db()
    # Due at once: dispatched (queued) when its submit committed.
    assert (child.state, child.pending_parents) == (TaskState.QUEUED, 0)


def _end_both(tasks: list[BatchTask]) -> None:
    runs = [Succeeded(Fence(t.pk, 1, ME), None, None) for t in tasks]
    transitions.end_succeeded(runs, using="default")


def _renew_both(tasks: list[BatchTask]) -> None:
    transitions.renew_leases(ME, None, 30, using="default")


@pytest.mark.parametrize("write", [_end_both, _renew_both], ids=["batched_end", "renewal"])
@pytest.mark.django_db(transaction=True)
def test_a_workers_write_of_many_tasks_locks_them_in_id_order_whatever_the_plan(
    definitions, write
) -> None:
    """A batch large enough gets a hash join over the running rows, which meets them in
    heap order, and a lease renewal moves a row behind later ones. A write of many tasks
    must still lock them in id order, as a child's submit locks its parents, or the two
    deadlock."""
    first, second = _running(), _running()
    BatchTask.objects.filter(pk=first.pk).update(lease_expires_at=None)  # now behind second
    BatchTask.objects.filter(pk=first.pk).update(lease_expires_at=second.lease_expires_at)
    started = threading.Event()
    errors: list[BaseException] = []

    def write_both() -> None:
        try:
            with connection.cursor() as cursor:  # the plan of a batch of hundreds
                cursor.execute("SET enable_nestloop = off")
                cursor.execute("SET enable_mergejoin = off")
            started.set()
            write([first, second])
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    with transaction.atomic():  # a child's submit that has locked the first parent
        BatchTask.objects.select_for_update(no_key=True).get(pk=first.pk)
        thread = threading.Thread(target=write_both)
        thread.start()
        started.wait()
        wait_for(_blocked_on_lock, timeout=10)
        child = BatchTask.submit("examples.noop", depends_on=[first, second])
    thread.join(10)

    assert errors == []
    child.refresh_from_db()
    running = BatchTask.objects.filter(pk__in=[first.pk, second.pk], state=TaskState.RUNNING)
    assert child.pending_parents == running.count()


@pytest.mark.django_db(transaction=True)
def test_a_childs_submit_caught_in_a_deadlock_links_again(definitions) -> None:
    """Another writer of several tasks (the dispatcher, a countdown) may still lock them
    out of id order: when PostgreSQL picks the child's submit to break the circle, the
    submit takes its parents' locks again instead of failing."""
    first, second = _running(), _running()
    done = threading.Event()
    result: list[BatchTask] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            result.append(BatchTask.submit("examples.noop", depends_on=[first, second]))
        except BaseException as error:
            errors.append(error)
        finally:
            done.set()
            connection.close()

    with transaction.atomic():  # the other writer: second, then first
        with connection.cursor() as cursor:  # the submit, not this, finds the deadlock
            cursor.execute("SET LOCAL deadlock_timeout = '30s'")
        BatchTask.objects.select_for_update(no_key=True).get(pk=second.pk)
        thread = threading.Thread(target=submit)
        thread.start()
        wait_for(_blocked_on_lock, timeout=10)  # the submit holds first, waits for second
        BatchTask.objects.select_for_update(no_key=True).get(pk=first.pk)
    thread.join(10)

    assert errors == []
    assert result[0].pending_parents == 2
