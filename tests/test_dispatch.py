"""The dispatcher against the real database and broker, stepping tasks by hand (no worker)."""

from __future__ import annotations

import os
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.contrib.auth import get_user_model
from django.utils import timezone

from batchtasks import BatchTask, BatchTaskPlugin, Priority, TaskState, batchtask, transitions
from batchtasks.definitions import ensure_queue, get_definition
from batchtasks.dispatch import dispatch_queue
from batchtasks.models import BatchQueue, BatchTaskDefinition
from tests.conftest import broker_at, purge_queues, set_limit

pytestmark = pytest.mark.django_db(transaction=True)

SHARED = "batch.tests.shared"


@batchtask("tests.shared_a", queue=SHARED, max_concurrency=2)
class SharedA(BatchTaskPlugin):
    def run(self, params: Any) -> None:
        return None


@batchtask("tests.shared_b", queue=SHARED)
class SharedB(BatchTaskPlugin):
    def run(self, params: Any) -> None:
        return None


@pytest.fixture(autouse=True)
def _empty_queues() -> None:
    purge_queues(["batch.examples.noop", "batch.examples.sleep", SHARED])


def broker_depth(queue: str) -> int:
    """Messages waiting in the real broker (kombu keeps a Redis list per queue)."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    return int(client.llen(os.environ["BATCHTASKS_REDIS_PREFIX"] + queue))


def states(*tasks: BatchTask) -> list[str]:
    by_id = dict(BatchTask.objects.filter(pk__in=[t.pk for t in tasks]).values_list("pk", "state"))
    return [by_id[t.pk] for t in tasks]


def run_one_queued(queue: str) -> BatchTask:
    """Act as a worker: claim the oldest queued task and finish it, then refill."""
    task = BatchTask.objects.filter(state=TaskState.QUEUED, queue=queue).order_by(
        "queued_at", "id"
    )[0]
    claim = transitions.claim(task.pk, worker="test", lease_seconds=30, using="default")
    assert claim is not None
    ok = transitions.finish(
        task.pk, claim.attempt, transitions.Outcome(TaskState.SUCCEEDED), using="default"
    )
    assert ok
    dispatch_queue(queue)
    return task


def test_submit_publishes_after_commit() -> None:
    task = BatchTask.submit("examples.noop")

    assert states(task) == [TaskState.QUEUED]
    assert broker_depth("batch.examples.noop") == 1
    task.refresh_from_db()
    assert task.queue == "batch.examples.noop" and task.queued_at is not None


def test_a_limited_type_never_has_more_in_flight_than_its_limit() -> None:
    set_limit("examples.sleep", 2)
    tasks = BatchTask.submit_many("examples.sleep", [{}] * 10)
    for _ in range(3):
        dispatch_queue("batch.examples.sleep")

    assert Counter(states(*tasks)) == {TaskState.QUEUED: 2, TaskState.NEW: 8}
    assert broker_depth("batch.examples.sleep") == 2

    run_one_queued("batch.examples.sleep")

    assert Counter(states(*tasks)) == {
        TaskState.SUCCEEDED: 1,
        TaskState.QUEUED: 2,
        TaskState.NEW: 7,
    }


def test_a_queue_limit_caps_its_types_together() -> None:
    get_definition("tests.shared_a")
    get_definition("tests.shared_b")
    BatchQueue.objects.filter(name=SHARED).update(max_concurrency=3)
    a = BatchTask.submit_many("tests.shared_a", [{}] * 5)
    b = BatchTask.submit_many("tests.shared_b", [{}] * 5)
    dispatch_queue(SHARED)

    in_flight = Counter(
        BatchTask.objects.filter(state=TaskState.QUEUED).values_list("definition__name", flat=True)
    )
    assert sum(in_flight.values()) == 3
    assert in_flight["tests.shared_a"] <= 2
    assert Counter(states(*a, *b))[TaskState.QUEUED] == 3


def test_a_full_type_does_not_block_another_type_of_its_queue() -> None:
    get_definition("tests.shared_b")
    a = BatchTask.submit_many("tests.shared_a", [{}] * 6, priority=Priority.IMMEDIATE)
    b = BatchTask.submit_many("tests.shared_b", [{}] * 3, priority=Priority.UNIMPORTANT)
    dispatch_queue(SHARED)

    assert Counter(states(*a))[TaskState.QUEUED] == 2
    assert Counter(states(*b))[TaskState.QUEUED] == 3


def test_unlimited_types_are_admitted_up_to_the_window(settings) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "DISPATCH_WINDOW": 5}
    tasks = BatchTask.submit_many("examples.noop", [{}] * 12)

    assert Counter(states(*tasks)) == {TaskState.QUEUED: 5, TaskState.NEW: 7}
    assert broker_depth("batch.examples.noop") == 5


def test_priority_then_age_decide_who_is_admitted() -> None:
    set_limit("examples.sleep", 1)
    blocker = BatchTask.submit("examples.sleep")
    low = BatchTask.submit("examples.sleep", priority=Priority.UNIMPORTANT)
    normal_1 = BatchTask.submit("examples.sleep")
    high = BatchTask.submit("examples.sleep", priority=Priority.IMPORTANT)
    normal_2 = BatchTask.submit("examples.sleep")

    order = [run_one_queued("batch.examples.sleep").pk for _ in range(5)]

    assert order == [blocker.pk, high.pk, normal_1.pk, normal_2.pk, low.pk]


def test_set_priority_reorders_waiting_tasks() -> None:
    set_limit("examples.sleep", 1)
    blocker = BatchTask.submit("examples.sleep")
    first = BatchTask.submit("examples.sleep")
    second = BatchTask.submit("examples.sleep")

    assert second.set_priority(Priority.IMMEDIATE)
    assert not blocker.set_priority(Priority.IMMEDIATE)  # already dispatched: too late
    order = [run_one_queued("batch.examples.sleep").pk for _ in range(3)]

    assert order == [blocker.pk, second.pk, first.pk]


def test_owners_take_turns() -> None:
    users = get_user_model().objects
    alice, bob, carol = (users.create_user(n) for n in ("alice", "bob", "carol"))
    set_limit("examples.sleep", 1)
    BatchTask.submit_many("examples.sleep", [{}] * 6, owner=alice)
    BatchTask.submit_many("examples.sleep", [{}] * 3, owner=bob)
    BatchTask.submit("examples.sleep", owner=carol)

    order = [run_one_queued("batch.examples.sleep").owner_id for _ in range(10)]

    names = {alice.pk: "a", bob.pk: "b", carol.pk: "c"}
    assert "".join(names[o] for o in order) == "abcababaaa"


def test_tasks_wait_for_run_after() -> None:
    later = BatchTask.submit("examples.noop", run_after=timedelta(hours=1))
    now = BatchTask.submit("examples.noop", run_after=timezone.now() - timedelta(seconds=1))

    assert states(later, now) == [TaskState.NEW, TaskState.QUEUED]
    BatchTask.objects.filter(pk=later.pk).update(run_after=timezone.now())
    dispatch_queue("batch.examples.noop")
    assert states(later) == [TaskState.QUEUED]


def test_a_disabled_type_keeps_its_backlog_waiting() -> None:
    set_limit("examples.sleep", 1)
    tasks = BatchTask.submit_many("examples.sleep", [{}] * 3)
    BatchTaskDefinition.objects.filter(name="examples.sleep").update(enabled=False)
    run_one_queued("batch.examples.sleep")

    assert Counter(states(*tasks)) == {TaskState.SUCCEEDED: 1, TaskState.NEW: 2}


def test_cancelling_a_queued_task_frees_its_slot() -> None:
    set_limit("examples.sleep", 1)
    first, second = BatchTask.submit_many("examples.sleep", [{}] * 2)

    assert first.cancel()

    assert states(first, second) == [TaskState.CANCELLED, TaskState.QUEUED]


def test_failed_publish_puts_tasks_back_to_new() -> None:
    with broker_at("redis://127.0.0.1:1/0"):  # nothing listens there
        task = BatchTask.submit("examples.noop")
        assert states(task) == [TaskState.NEW]

    dispatch_queue("batch.examples.noop")

    assert states(task) == [TaskState.QUEUED]
    assert broker_depth("batch.examples.noop") == 1


def test_a_queue_row_is_created_when_a_type_moves_to_a_new_queue() -> None:
    definition = get_definition("examples.noop")
    definition.queue = "batch.moved"
    definition.save()
    ensure_queue("batch.moved")
    purge_queues(["batch.moved"])

    task = BatchTask.submit("examples.noop")

    task.refresh_from_db()
    assert (task.state, task.queue) == (TaskState.QUEUED, "batch.moved")
    purge_queues(["batch.moved"])


def test_direct_admission_keeps_to_the_window_and_never_overtakes(settings) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "DISPATCH_WINDOW": 2}
    tasks = [BatchTask.submit("examples.noop", description=str(i)) for i in range(4)]

    assert states(*tasks) == ["queued", "queued", "new", "new"]
    BatchTask.objects.filter(pk=tasks[0].pk).update(state=TaskState.SUCCEEDED)
    late = BatchTask.submit("examples.noop", description="late")  # a slot is free now

    assert states(*tasks[2:], late) == ["queued", "new", "new"]
