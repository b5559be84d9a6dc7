"""The dispatcher against the real database and broker, stepping tasks by hand (no worker)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from django.contrib.auth import get_user_model
from django.db import OperationalError, connection, connections, transaction
from django.utils import timezone

from batchtasks import BatchTask, BatchTaskPlugin, Priority, TaskState, batchtask, transitions
from batchtasks.core.states import AttemptOutcome
from batchtasks.models import BatchQueue, BatchTaskDefinition
from batchtasks.services.definitions import get_definition
from batchtasks.services.dispatch import TypeSlot, _merge_candidates, dispatch_queue
from batchtasks.transport.depth import queue_depth
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


@batchtask("tests.shared_c", queue=SHARED)
class SharedC(BatchTaskPlugin):
    def run(self, params: Any) -> None:
        return None


@pytest.fixture(autouse=True)
def _empty_queues() -> None:
    purge_queues(["batch.examples.noop", "batch.examples.sleep", SHARED])


def broker_depth(queue: str) -> int:
    """Messages waiting in the real broker (Redis or RabbitMQ)."""
    return queue_depth(queue)


def states(*tasks: BatchTask) -> list[str]:
    by_id = dict(BatchTask.objects.filter(pk__in=[t.pk for t in tasks]).values_list("pk", "state"))
    return [by_id[t.pk] for t in tasks]


def run_one_queued(queue: str) -> BatchTask:
    """Act as a worker: claim the oldest queued task and finish it, then refill."""
    task = BatchTask.objects.filter(state=TaskState.QUEUED, queue=queue).order_by(
        "queued_at", "id"
    )[0]
    fence = transitions.Fence(task.pk, task.attempt, "test")
    claim = transitions.claim(fence, worker="test", pid=1, lease_seconds=30, using="default")
    assert claim is not None
    done = transitions.Outcome(AttemptOutcome.SUCCEEDED)
    assert transitions.end_attempt(fence, done, using="default") is not None
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


def test_submit_many_queues_its_first_tasks_as_far_as_the_window_has_room(settings) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "DISPATCH_WINDOW": 5}
    alone = BatchTask.submit("examples.noop")

    tasks = BatchTask.submit_many("examples.noop", [{"n": n} for n in range(7)])

    # The window had room for 4: the first 4 skip the dispatcher, the rest wait for it.
    expected = [TaskState.QUEUED] * 4 + [TaskState.NEW] * 3
    assert [t.state for t in tasks] == expected
    assert states(*tasks) == expected
    assert broker_depth("batch.examples.noop") == 5
    stored = BatchTask.objects.get(pk=tasks[0].pk)
    assert (stored.queue, stored.queued_at) == ("batch.examples.noop", stored.created_at)
    assert stored.group_id == tasks.id and stored.params == {"n": 0}
    # Each slot they free goes to the next of the line, in submit order.
    order = [run_one_queued("batch.examples.noop").pk for _ in range(8)]
    assert order == [alone.pk, *(t.pk for t in tasks)]


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


def test_a_deleted_queue_row_is_created_again_and_its_tasks_dispatched() -> None:
    set_limit("examples.sleep", 2)
    BatchQueue.objects.filter(name="batch.examples.sleep").delete()

    tasks = BatchTask.submit_many("examples.sleep", [{}] * 3)

    assert Counter(states(*tasks)) == {TaskState.QUEUED: 2, TaskState.NEW: 1}
    assert BatchQueue.objects.filter(name="batch.examples.sleep").exists()
    assert broker_depth("batch.examples.sleep") == 2


def test_a_type_moved_to_a_queue_without_a_row_is_dispatched_there() -> None:
    definition = get_definition("examples.sleep")
    BatchTaskDefinition.objects.filter(pk=definition.pk).update(
        queue="batch.moved", max_concurrency=1
    )
    purge_queues(["batch.moved"])

    first, second = BatchTask.submit_many("examples.sleep", [{}] * 2)

    assert states(first, second) == [TaskState.QUEUED, TaskState.NEW]
    assert BatchTask.objects.get(pk=first.pk).queue == "batch.moved"
    assert broker_depth("batch.moved") == 1
    purge_queues(["batch.moved"])


def test_types_sharing_a_queue_share_its_turns() -> None:
    users = get_user_model().objects
    alice, bob = users.create_user("alice"), users.create_user("bob")
    get_definition("tests.shared_b")
    BatchQueue.objects.filter(name=SHARED).update(max_concurrency=1)
    BatchTask.submit_many("tests.shared_a", [{}] * 6, owner=alice)
    BatchTask.submit("tests.shared_b", owner=bob)

    order = [run_one_queued(SHARED).owner_id for _ in range(7)]

    assert order.index(bob.pk) <= 2, f"bob waited behind alice's backlog: {order}"


def test_a_pass_whose_commit_answer_was_lost_still_publishes_what_it_admitted(
    monkeypatch,
) -> None:
    set_limit("examples.sleep", 2)
    tasks = BatchTask.submit_many("examples.sleep", [{}] * 5)
    purge_queues(["batch.examples.sleep"])  # as if nothing had been dispatched yet
    BatchTask.objects.filter(pk__in=[t.pk for t in tasks]).update(
        state=TaskState.NEW, queue="", queued_at=None
    )
    real_commit = connection.commit
    lost = []

    def commit_then_lose_the_answer() -> None:
        real_commit()
        if not lost:
            lost.append(True)
            raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(connection, "commit", commit_then_lose_the_answer)
    dispatch_queue("batch.examples.sleep")

    assert lost
    assert Counter(states(*tasks)) == {TaskState.QUEUED: 2, TaskState.NEW: 3}
    assert broker_depth("batch.examples.sleep") == 2  # published after the retry


def test_direct_admission_keeps_to_the_window_and_never_overtakes(settings) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "DISPATCH_WINDOW": 2}
    tasks = [BatchTask.submit("examples.noop", description=str(i)) for i in range(4)]

    assert states(*tasks) == ["queued", "queued", "new", "new"]
    BatchTask.objects.filter(pk=tasks[0].pk).update(state=TaskState.SUCCEEDED)
    late = BatchTask.submit("examples.noop", description="late")  # a slot is free now

    assert states(*tasks[2:], late) == ["queued", "new", "new"]


def test_a_dispatch_pass_is_read_committed_whatever_the_connection_default() -> None:
    from batchtasks.db.connections import read_committed

    other = connection.copy("serializable")
    other.settings_dict["OPTIONS"] = {
        **other.settings_dict.get("OPTIONS", {}),
        "isolation_level": psycopg.IsolationLevel.SERIALIZABLE,
    }
    connections["serializable"] = other
    try:
        seen = []
        for force in (False, True):
            with transaction.atomic(using="serializable"):
                if force:
                    read_committed("serializable")
                with other.cursor() as cursor:
                    cursor.execute("SHOW transaction_isolation")
                    seen.append(cursor.fetchone()[0])
        assert seen == ["serializable", "read committed"]
    finally:
        other.close()
        del connections["serializable"]


def test_a_system_check_refuses_another_isolation_level(settings) -> None:
    from django.core.checks import run_checks

    databases = {alias: dict(value) for alias, value in settings.DATABASES.items()}
    databases["default"]["OPTIONS"] = {
        **databases["default"].get("OPTIONS", {}),
        "isolation_level": psycopg.IsolationLevel.REPEATABLE_READ,
    }
    with connections_settings(databases):
        errors = [e for e in run_checks(databases=["default"]) if e.id == "batchtasks.E004"]

    assert len(errors) == 1 and "REPEATABLE_READ" in errors[0].msg
    assert "READ COMMITTED" in errors[0].msg


@contextmanager
def connections_settings(databases: dict) -> Iterator[None]:
    saved = connections.settings
    connections.settings = databases
    try:
        yield
    finally:
        connections.settings = saved


@pytest.mark.django_db
def test_a_limited_submit_is_dispatched_when_a_test_runs_the_commit_callbacks(
    django_capture_on_commit_callbacks,
) -> None:
    set_limit("examples.noop", 2)

    with django_capture_on_commit_callbacks(execute=True):
        task = BatchTask.submit("examples.noop")

    task.refresh_from_db()
    assert task.state == TaskState.QUEUED


def set_queue_limit(limit: int) -> None:
    BatchQueue.objects.filter(name=SHARED).update(max_concurrency=limit)


def waiting(type_name: str, turns: list[int], **options: Any) -> list[BatchTask]:
    """Tasks of a type submitted while the shared queue is shut, taking these fair turns."""
    tasks = BatchTask.submit_many(type_name, [{}] * len(turns), **options)
    for task, turn in zip(tasks, turns, strict=True):
        BatchTask.objects.filter(pk=task.pk).update(fair_round=turn)
    return tasks


def queued(*tasks: BatchTask) -> set[int]:
    return {t.pk for t, state in zip(tasks, states(*tasks), strict=True) if state == "queued"}


def test_a_shared_queue_admits_the_best_tasks_each_type_has_room_for() -> None:
    for name in ("tests.shared_a", "tests.shared_b", "tests.shared_c"):
        get_definition(name)
    set_limit("tests.shared_c", 3)  # shared_a: 2, shared_b: unlimited
    set_queue_limit(0)
    a = waiting("tests.shared_a", [0, 0, 0, 0], priority=Priority.IMMEDIATE)
    (b_urgent,) = waiting("tests.shared_b", [0], priority=Priority.IMPORTANT)
    (b_later,) = waiting(
        "tests.shared_b", [0], priority=Priority.IMPORTANT, run_after=timedelta(hours=1)
    )
    b = waiting("tests.shared_b", [5, 6, 7])
    c = waiting("tests.shared_c", [0, 1, 2, 3, 4])
    set_queue_limit(2)
    dispatch_queue(SHARED)
    assert queued(*a) == {a[0].pk, a[1].pk}  # shared_a is now full

    set_queue_limit(7)  # 5 free slots; shared_b could take 5, shared_c 3
    dispatch_queue(SHARED)

    # shared_a's urgent tasks wait for its slots, b_later for its time, and shared_c's
    # fourth turn for a slot of its own: b's turn 5 goes first.
    assert queued(*a, b_urgent, b_later, *b, *c) == {
        a[0].pk,
        a[1].pk,
        b_urgent.pk,
        c[0].pk,
        c[1].pk,
        c[2].pk,
        b[0].pk,
    }
    assert broker_depth(SHARED) == 7


def test_a_type_with_urgent_work_takes_more_than_its_share_of_a_shared_queue() -> None:
    get_definition("tests.shared_b")
    get_definition("tests.shared_c")
    set_queue_limit(0)
    urgent = waiting("tests.shared_b", [3, 4, 5, 6, 7], priority=Priority.IMPORTANT)
    normal = waiting("tests.shared_c", [0, 1, 2, 3, 4])
    set_queue_limit(6)

    dispatch_queue(SHARED)

    assert queued(*urgent, *normal) == {t.pk for t in urgent} | {normal[0].pk}


def test_a_shared_queue_picks_what_merging_each_types_own_line_picks() -> None:
    """Random lines of three types against a plain merge of each type's best due tasks."""
    names = ["tests.shared_a", "tests.shared_b", "tests.shared_c"]
    ids = [get_definition(name).pk for name in names]
    set_queue_limit(0)
    rng = random.Random(20240611)
    hour = timedelta(hours=1)
    for name in names:
        for task in BatchTask.submit_many(name, [{}] * rng.randint(0, 14)):
            BatchTask.objects.filter(pk=task.pk).update(
                priority=rng.choice([-50, 0, 0, 50]),
                fair_round=rng.randint(0, 6),
                run_after=rng.choice([None, None, timezone.now() - hour, timezone.now() + hour]),
            )
    due = [
        (t.definition_id, -t.priority, t.fair_round, t.pk)
        for t in BatchTask.objects.filter(state=TaskState.NEW)
        if t.run_after is None or t.run_after < timezone.now()
    ]
    uneven = 0
    for _ in range(300):
        queue_free = rng.randint(1, 16)
        slots = []
        for pk in ids:
            limit = rng.choice([None, rng.randint(1, 8)])
            slot = TypeSlot(pk, limit, rng.randint(0, limit) if limit else 0)
            if slot.free(queue_free) > 0:
                slots.append(slot)
        if not slots:
            continue
        candidates = []
        for slot in slots:  # each type's own line, as far as its free slots reach
            line = sorted(row for row in due if row[0] == slot.definition_id)
            candidates += line[: slot.free(queue_free)]
        expected = sorted(candidates, key=lambda row: row[1:])[:queue_free]

        assert _merge_candidates(slots, queue_free, "default") == [row[3] for row in expected]
        counts = Counter(row[0] for row in expected)
        uneven += max(counts.values(), default=0) > -(-queue_free // len(slots))
    assert uneven >= 20  # lines where one type took more than an even share were tried
