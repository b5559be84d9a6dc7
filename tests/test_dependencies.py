"""Dependencies (``depends_on``, ``group.then``): a child waits ``blocked`` in the
database until every parent is final; the last parent's final write makes it due, a
parent that did not succeed skips it (unless ``on_parent_failure="run"``)."""

from __future__ import annotations

import pytest

from batchtasks import BatchTask, TaskState, transitions
from batchtasks.core.exceptions import InvalidTaskOption
from batchtasks.core.states import AttemptOutcome
from batchtasks.models import BatchTaskDependency
from batchtasks.transitions import Fence, Outcome, Succeeded

pytestmark = pytest.mark.django_db

ME = "a" * 32


def running(type_name: str = "examples.noop", **submit: object) -> BatchTask:
    """A task claimed by this test, as a worker would."""
    task = BatchTask.submit(type_name, {}, **submit)
    BatchTask.objects.filter(pk=task.pk).update(state=TaskState.QUEUED, queue="q")
    assert transitions.claim(
        Fence(task.pk, 1, ME), worker="w@host", pid=1, lease_seconds=30, using="default"
    )
    return task


def end(task: BatchTask, kind: str = AttemptOutcome.SUCCEEDED, **outcome: object):
    return transitions.end_attempt(
        Fence(task.pk, task.attempt, ME), Outcome(kind, **outcome), using="default"
    )


def state(task: BatchTask) -> str:
    task.refresh_from_db()
    return task.state


def test_child_waits_blocked_until_its_last_parent_succeeds() -> None:
    a, b = running(), running()

    child = BatchTask.submit("examples.merge", depends_on=[a, b.pk])

    assert (child.state, child.pending_parents) == (TaskState.BLOCKED, 2)
    assert child.state_code == 1
    end(a, result={"a": 1})
    child.refresh_from_db()
    assert (child.state, child.pending_parents) == (TaskState.BLOCKED, 1)
    ended = end(b, result=2)
    assert ended is not None and ended.settled is not None
    assert ended.settled.due == {"batch.examples.merge"}
    assert state(child) == TaskState.NEW
    assert child.parent_results() == {a.pk: {"a": 1}, b.pk: 2}
    assert list(child.parents()) == [a, b] and list(a.children()) == [child]


def test_a_parent_that_fails_skips_the_child_and_the_grandchild_naming_it() -> None:
    parent, other = running(), running()
    child = BatchTask.submit("examples.noop", depends_on=[parent, other])
    grandchild = BatchTask.submit("examples.noop", depends_on=[child])

    end(parent, AttemptOutcome.FAILED, error_message="boom")

    for task in (child, grandchild):
        task.refresh_from_db()
        assert task.state == TaskState.SKIPPED
        assert task.finished_at is not None
    assert f"parent task {parent.pk} ended failed" in child.error_message
    assert f"parent task {child.pk} ended skipped" in grandchild.error_message
    end(other)  # the other parent's end changes nothing more
    assert state(child) == TaskState.SKIPPED


def test_on_parent_failure_run_runs_after_a_failed_parent() -> None:
    parent = running()
    child = BatchTask.submit("examples.noop", depends_on=[parent], on_parent_failure="run")

    end(parent, AttemptOutcome.FAILED)

    assert state(child) == TaskState.NEW
    assert child.parent_results() == {parent.pk: None}


def test_a_retried_parent_does_not_release_the_child_early() -> None:
    parent, other = running("examples.flaky"), running()
    child = BatchTask.submit("examples.noop", depends_on=[parent, other])

    ended = end(parent, AttemptOutcome.FAILED, retry=True)  # attempt 2 follows

    assert ended is not None and ended.runs_again
    child.refresh_from_db()
    assert (child.state, child.pending_parents) == (TaskState.BLOCKED, 2)


def test_a_parent_failed_then_retried_by_hand_is_counted_once() -> None:
    parent, other = running(), running()
    child = BatchTask.submit("examples.noop", depends_on=[parent, other], on_parent_failure="run")
    end(parent, AttemptOutcome.FAILED)
    assert BatchTask.objects.get(pk=parent.pk).retry()
    parent.refresh_from_db()
    BatchTask.objects.filter(pk=parent.pk).update(state=TaskState.QUEUED)
    transitions.claim(
        Fence(parent.pk, 2, ME), worker="w@host", pid=1, lease_seconds=30, using="default"
    )

    end(parent)

    child.refresh_from_db()
    assert (child.state, child.pending_parents) == (TaskState.BLOCKED, 1)


def test_parents_already_final_at_submit_are_counted_at_once() -> None:
    done, failed = running(), running()
    end(done, result="x")
    end(failed, AttemptOutcome.FAILED)

    ready = BatchTask.submit("examples.noop", depends_on=[done])
    skipped = BatchTask.submit("examples.noop", depends_on=[done, failed])
    runs = BatchTask.submit("examples.noop", depends_on=[failed], on_parent_failure="run")

    assert ready.state == TaskState.NEW and state(ready) == TaskState.NEW
    assert skipped.state == TaskState.SKIPPED and state(skipped) == TaskState.SKIPPED
    assert f"parent task {failed.pk} ended failed" in skipped.error_message
    assert state(runs) == TaskState.NEW


def test_unknown_parents_and_bad_options_are_refused_before_anything_is_written() -> None:
    parent = running()
    before = BatchTask.objects.count()

    with pytest.raises(InvalidTaskOption, match=r"do not exist.*987654"):
        BatchTask.submit("examples.noop", depends_on=[parent, 987654])
    with pytest.raises(InvalidTaskOption, match="on_parent_failure"):
        BatchTask.submit("examples.noop", depends_on=[parent], on_parent_failure="maybe")
    with pytest.raises(InvalidTaskOption, match="a list of tasks"):
        BatchTask.submit("examples.noop", depends_on=parent)

    assert BatchTask.objects.count() == before
    assert BatchTask.objects.get(pk=parent.pk).child_count == 0


def test_blocked_tasks_are_never_dispatched() -> None:
    from batchtasks.services.dispatch import dispatch_queue

    parent = running()
    child = BatchTask.submit("examples.merge", depends_on=[parent])

    dispatch_queue("batch.examples.merge")

    assert state(child) == TaskState.BLOCKED


def test_cancel_cascade_cancels_the_blocked_descendants() -> None:
    parent = BatchTask.submit("examples.noop", run_after=None)
    child = BatchTask.submit("examples.noop", depends_on=[parent], on_parent_failure="run")
    grandchild = BatchTask.submit("examples.noop", depends_on=[child], on_parent_failure="run")

    assert parent.cancel(cascade=True)

    assert [state(t) for t in (parent, child, grandchild)] == [TaskState.CANCELLED] * 3


def test_cancel_without_cascade_skips_children_that_skip() -> None:
    parent = BatchTask.submit("examples.noop")
    child = BatchTask.submit("examples.noop", depends_on=[parent])
    runs = BatchTask.submit("examples.noop", depends_on=[parent], on_parent_failure="run")

    assert parent.cancel()

    assert state(child) == TaskState.SKIPPED
    assert f"parent task {parent.pk} ended cancelled" in child.error_message
    assert state(runs) == TaskState.NEW


def test_a_blocked_task_can_be_cancelled_itself() -> None:
    parent = running()
    child = BatchTask.submit("examples.noop", depends_on=[parent])

    assert child.cancel()
    end(parent)

    assert state(child) == TaskState.CANCELLED


def test_batched_successes_release_a_child_of_many_parents() -> None:
    parents = [running() for _ in range(3)]
    child = BatchTask.submit("examples.noop", depends_on=parents)
    lone = running()  # no children: ended by the one batched statement

    ended = transitions.end_succeeded(
        [Succeeded(Fence(p.pk, 1, ME), {"n": p.pk}, None) for p in [*parents, lone]],
        using="default",
    )

    assert set(ended) == {p.pk for p in [*parents, lone]}
    assert state(child) == TaskState.NEW
    assert set(child.parent_results()) == {p.pk for p in parents}


def test_group_then_depends_on_every_task_of_the_group() -> None:
    group = BatchTask.submit_many("examples.noop", [{}, {}, {}])

    child = group.then("examples.merge", {"batch": 7})

    assert child.state == TaskState.BLOCKED and child.pending_parents == 3
    links = BatchTaskDependency.objects.filter(child=child).order_by("position")
    assert [link.parent_id for link in links] == [t.pk for t in group]
    assert child.params == {"batch": 7}


def test_submit_many_with_depends_on_blocks_every_task() -> None:
    parent = running()

    group = BatchTask.submit_many("examples.noop", [{}, {}], depends_on=[parent])

    assert {state(t) for t in group} == {TaskState.BLOCKED}
    end(parent)
    assert {state(t) for t in group} == {TaskState.NEW}


def test_supersede_skips_a_blocked_task_and_its_children() -> None:
    parent = running()
    old = BatchTask.submit("examples.noop", depends_on=[parent], unique_key="k")
    child = BatchTask.submit("examples.noop", depends_on=[old])

    BatchTask.submit("examples.noop", unique_key="k", on_conflict="supersede")

    assert state(old) == TaskState.SKIPPED
    assert state(child) == TaskState.SKIPPED


def test_purging_a_finished_parent_deletes_its_links() -> None:
    parent = running()
    child = BatchTask.submit("examples.noop", depends_on=[parent])
    end(parent)

    assert transitions.delete_tasks([parent.pk], using="default") == 1

    assert not BatchTaskDependency.objects.filter(child=child).exists()
    assert child.parent_results() == {}


@pytest.mark.django_db(transaction=True)
def test_run_tasks_runs_a_group_then_after_the_group(definitions) -> None:
    from batchtasks.testing import run_tasks

    with run_tasks():
        group = BatchTask.submit_many("examples.flaky", [{"succeed_on": 1}] * 3)
        done = group.then("examples.merge")

    done.refresh_from_db()
    assert done.state == TaskState.SUCCEEDED
    assert done.result == {"parents": [[t.pk, {"attempt": 1}] for t in group]}


def test_the_admin_page_of_a_task_lists_its_parents_and_children(admin_client) -> None:
    from django.urls import reverse

    parent = BatchTask.submit("examples.noop")
    child = BatchTask.submit("examples.noop", depends_on=[parent])

    page = admin_client.get(reverse("admin:batchtasks_batchtask_change", args=[child.pk]))
    parent_page = admin_client.get(reverse("admin:batchtasks_batchtask_change", args=[parent.pk]))

    assert page.status_code == parent_page.status_code == 200
    parent_url = reverse("admin:batchtasks_batchtask_change", args=[parent.pk])
    child_url = reverse("admin:batchtasks_batchtask_change", args=[child.pk])
    parent.refresh_from_db()
    assert f'<a href="{parent_url}">#{parent.pk}</a> ({parent.state})' in page.content.decode()
    assert f'<a href="{child_url}">#{child.pk}</a> (blocked)' in parent_page.content.decode()
    assert "Waiting for its parents" in page.content.decode()


def test_a_lost_run_of_a_parent_does_not_release_the_child_but_its_last_failure_skips_it() -> None:
    parent = running()
    child = BatchTask.submit("examples.noop", depends_on=[parent])

    ended = end(parent, AttemptOutcome.LOST, error_type="WorkerLostError")

    assert ended is not None and ended.runs_again
    assert state(child) == TaskState.BLOCKED
    parent.refresh_from_db()
    BatchTask.objects.filter(pk=parent.pk).update(state=TaskState.QUEUED)
    transitions.claim(
        Fence(parent.pk, parent.attempt, ME), worker="w", pid=1, lease_seconds=30, using="default"
    )
    end(parent, AttemptOutcome.FAILED)
    assert state(child) == TaskState.SKIPPED


def test_djangos_task_api_reads_a_waiting_child_as_ready_and_a_skipped_one_as_failed() -> None:
    from batchtasks.backends.django_tasks import TaskResultStatus
    from tests import django_task_functions as functions

    parent = running()
    child = BatchTask.submit(
        "tests.django_task_functions.add", {"args": [2], "kwargs": {"b": 3}}, depends_on=[parent]
    )

    # The backend's own lookup: no check of which module object the function came from
    # (another test may have imported the functions' module anew).
    backend = functions.add.get_backend()
    assert backend.get_result(str(child.pk)).status == TaskResultStatus.READY
    end(parent, AttemptOutcome.FAILED)
    result = backend.get_result(str(child.pk))
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[-1].exception_class_path == "batchtasks.ParentNotSucceeded"


def test_the_command_line_shows_what_a_task_waits_for() -> None:
    from io import StringIO

    from django.core.management import call_command

    parent = running()
    child = BatchTask.submit("examples.noop", depends_on=[parent], on_parent_failure="run")
    out = StringIO()

    call_command("batchtasks", "show", str(child.pk), stdout=out)

    assert f"#{parent.pk} running (on failure: run)" in out.getvalue()
    assert "1 of them" in out.getvalue()


def test_purging_a_finished_child_deletes_its_links() -> None:
    parent = running()
    child = BatchTask.submit("examples.noop", depends_on=[parent])
    assert child.cancel()

    assert transitions.delete_tasks([child.pk], using="default") == 1

    assert not BatchTaskDependency.objects.filter(parent=parent).exists()
