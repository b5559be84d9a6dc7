"""Priority aging (``BATCHTASKS["PRIORITY_AGING"]``): the sweeper raises the priority of
tasks that wait, so that a flood of higher priorities cannot hold a low one back for ever.
Time passes in the database: the tests move the tasks' times back instead of sleeping."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core import checks
from django.db.models import F
from django.utils import timezone

from batchtasks import BatchTask, Priority, TaskState, transitions
from batchtasks.core.conf import BatchTasksSettings, get_settings
from batchtasks.core.exceptions import ConfigurationError
from batchtasks.core.states import PRIORITY_MAX, AttemptOutcome
from batchtasks.services.dispatch import dispatch_queue
from batchtasks.services.sweeper import age_waiting, sweep
from tests.conftest import purge_queues, set_limit
from tests.workers import Worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "batch.examples.sleep"
#: Seconds of waiting per priority point in these tests.
PER_POINT = 10
#: Seconds that pass between two steps of a flood.
STEP = 60


@pytest.fixture(autouse=True)
def _empty_queues() -> None:
    purge_queues([QUEUE])


def let_time_pass(seconds: float) -> None:
    """As if ``seconds`` passed for every task: their times move back (the database's
    clock is what aging reads)."""
    ago = timedelta(seconds=seconds)
    tasks = BatchTask.objects.all()
    tasks.update(created_at=F("created_at") - ago)
    tasks.filter(run_after__isnull=False).update(run_after=F("run_after") - ago)


def run_one_queued() -> BatchTask:
    """Act as a worker: claim the oldest queued task and finish it, then refill."""
    task = BatchTask.objects.filter(state=TaskState.QUEUED).order_by("queued_at", "id")[0]
    fence = transitions.Fence(task.pk, task.attempt, "test")
    assert transitions.claim(fence, worker="test", pid=1, lease_seconds=30, using="default")
    done = transitions.Outcome(AttemptOutcome.SUCCEEDED)
    assert transitions.end_attempt(fence, done, using="default") is not None
    dispatch_queue(QUEUE)
    return task


def flood(steps: int, backlog: int = 0, owner: object = None) -> tuple[BatchTask, list[int]]:
    """One slot; a priority-0 task (of ``owner``) behind ``backlog`` priority-100 tasks,
    and more that keep coming, two per step while one runs. Each step: ``STEP`` seconds
    pass, a sweep, one task runs. Returns the low task and the ids in the order they ran."""
    set_limit("examples.sleep", 1)
    BatchTask.submit("examples.sleep", {"seconds": 0}, priority=Priority.IMMEDIATE)
    BatchTask.submit_many("examples.sleep", [{"seconds": 0}] * backlog, priority=100)
    low = BatchTask.submit("examples.sleep", {"seconds": 0}, priority=Priority.NORMAL, owner=owner)
    order = []
    for _ in range(steps):
        let_time_pass(STEP)
        BatchTask.submit_many("examples.sleep", [{"seconds": 0}] * 2, priority=100)
        assert sweep(using="default") is not None
        order.append(run_one_queued().pk)
    return low, order


#: 100 points at one per PER_POINT seconds: the sweep after 1,000 s of waiting lifts the
#: low task to 100, and the pass that follows admits it if its fair turn comes first.
BOUND = math.ceil(100 * PER_POINT / STEP) + 1


def test_with_aging_a_low_task_runs_within_its_bound_under_a_flood(settings) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "PRIORITY_AGING": PER_POINT}

    low, order = flood(steps=BOUND + 3)

    assert low.pk in order[: BOUND + 1]
    low.refresh_from_db()
    assert (low.priority, low.base_priority) == (Priority.IMMEDIATE, Priority.NORMAL)
    assert BatchTask.objects.filter(state=TaskState.NEW, priority=100).count() > 0  # a flood


def test_aged_to_the_top_a_task_takes_its_fair_turn_among_the_flood(settings) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "PRIORITY_AGING": PER_POINT}
    backlog = 2 * BOUND  # more than run before it reaches the top

    # Its owner's own earlier tasks at 100 run first (here: no owner, as the flood's);
    # everything submitted after it waits.
    low, order = flood(steps=backlog + 5, backlog=backlog)

    at = order.index(low.pk)
    assert sorted(order[: at + 1]) == order[: at + 1]
    assert at == backlog + 1  # the first task, then the backlog

    # Another owner's task goes into the turn served now: it runs within the bound.
    BatchTask.objects.all().delete()
    other = get_user_model().objects.create_user("other")
    low, order = flood(steps=BOUND + 3, backlog=backlog, owner=other)
    assert low.pk in order[: BOUND + 1]


def test_without_aging_a_low_task_waits_while_a_flood_lasts() -> None:
    assert get_settings().PRIORITY_AGING is None  # the default

    low, order = flood(steps=40)  # 40 minutes of flood: four times the bound above

    assert low.pk not in order
    low.refresh_from_db()
    assert (low.state, low.priority, low.base_priority) == (TaskState.NEW, 0, None)


def test_aging_raises_by_the_wait_up_to_the_highest_priority_and_keeps_the_given_one(
    settings,
) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "PRIORITY_AGING": PER_POINT}
    set_limit("examples.sleep", 0)  # nothing dispatched: they all wait
    BatchTask.submit("examples.sleep", priority=0)  # fresh: not a point's wait yet
    waited = BatchTask.submit("examples.sleep", priority=-50)
    long_waited = BatchTask.submit("examples.sleep", priority=50)
    BatchTask.objects.filter(pk=waited.pk).update(created_at=timezone.now() - timedelta(seconds=95))
    BatchTask.objects.filter(pk=long_waited.pk).update(
        created_at=timezone.now() - timedelta(days=1)
    )

    assert age_waiting(using="default") == 2
    assert age_waiting(using="default") == 0  # nothing more until another point is due

    rows = BatchTask.objects.order_by("pk").values_list("priority", "base_priority")
    assert list(rows) == [(0, None), (-41, -50), (100, 50)]


def test_a_sweep_raises_a_batch_those_it_raises_highest_first(settings) -> None:
    set_limit("examples.sleep", 0)
    tasks = [BatchTask.submit("examples.sleep", priority=p) for p in (-100, 0, 0, 50)]
    BatchTask.objects.filter(pk=tasks[2].pk).update(created_at=F("created_at") - timedelta(1))
    let_time_pass(300)  # 30 points each

    assert transitions.age_priorities(PER_POINT, PRIORITY_MAX, 2, using="default") == 2

    rows = BatchTask.objects.order_by("pk").values_list("priority", flat=True)
    assert list(rows) == [-100, 0, 100, 80]  # the day-old one and the 50 first
    assert transitions.age_priorities(PER_POINT, PRIORITY_MAX, 2, using="default") == 2
    assert list(rows.all()) == [-70, 30, 100, 80]


def test_a_delayed_task_ages_from_its_run_after(settings) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "PRIORITY_AGING": PER_POINT}
    set_limit("examples.sleep", 0)
    later = BatchTask.submit("examples.sleep", run_after=timedelta(seconds=30))
    due = BatchTask.submit("examples.sleep", run_after=timedelta(seconds=30))
    let_time_pass(3600)
    BatchTask.objects.filter(pk=later.pk).update(run_after=timezone.now() + timedelta(hours=1))
    BatchTask.objects.filter(pk=due.pk).update(run_after=timezone.now() - timedelta(seconds=25))

    age_waiting(using="default")

    later.refresh_from_db()
    due.refresh_from_db()
    assert (later.priority, due.priority) == (0, 2)


def test_set_priority_and_retry_start_again_from_the_users_priority(settings) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "PRIORITY_AGING": PER_POINT}
    set_limit("examples.sleep", 0)
    task = BatchTask.submit("examples.sleep")
    let_time_pass(200)
    age_waiting(using="default")
    task.refresh_from_db()
    assert (task.priority, task.base_priority) == (20, 0)

    assert task.set_priority(-100)
    task.refresh_from_db()
    assert (task.priority, task.base_priority) == (-100, None)
    age_waiting(using="default")  # the 200 s waited count from the user's priority
    task.refresh_from_db()
    assert (task.priority, task.base_priority) == (-80, -100)

    task.cancel()
    let_time_pass(3600)
    assert task.retry()
    task.refresh_from_db()
    assert (task.priority, task.base_priority) == (-100, None)
    age_waiting(using="default")  # its new wait starts at the retry
    task.refresh_from_db()
    assert task.priority == -100


def test_aging_off_reads_nothing(settings, django_assert_num_queries) -> None:
    set_limit("examples.sleep", 0)
    BatchTask.submit("examples.sleep")
    let_time_pass(3600)
    for off in (None, 0):
        settings.BATCHTASKS = {**settings.BATCHTASKS, "PRIORITY_AGING": off}
        with django_assert_num_queries(0):
            assert age_waiting(using="default") == 0


@pytest.mark.parametrize("bad", [-1, "60", True, float("nan")])
def test_a_bad_aging_setting_is_refused_with_a_clear_error(settings, bad: object) -> None:
    with pytest.raises(ConfigurationError, match="PRIORITY_AGING"):
        BatchTasksSettings.from_dict({"PRIORITY_AGING": bad})
    settings.BATCHTASKS = {**settings.BATCHTASKS, "PRIORITY_AGING": bad}
    errors = [e for e in checks.run_checks() if e.id == "batchtasks.E001"]
    assert errors and "PRIORITY_AGING" in errors[0].msg


def test_the_environment_may_set_aging_per_server(settings, monkeypatch) -> None:
    monkeypatch.setenv("BATCHTASKS_PRIORITY_AGING", "30")
    settings.BATCHTASKS = {**settings.BATCHTASKS}  # read again
    assert get_settings().PRIORITY_AGING == 30.0
    monkeypatch.setenv("BATCHTASKS_PRIORITY_AGING", "soon")
    settings.BATCHTASKS = {**settings.BATCHTASKS}
    with pytest.raises(ConfigurationError, match="BATCHTASKS_PRIORITY_AGING"):
        get_settings()


def test_a_workers_sweeper_ages_a_starved_task_into_a_flood(
    start_worker: Callable[..., Worker],
) -> None:
    set_limit("examples.sleep", 1)
    BatchTask.submit("examples.sleep", {"seconds": 0}, priority=100)  # takes the slot
    low = BatchTask.submit("examples.sleep", {"seconds": 0}, priority=0)
    tasks = BatchTask.submit_many("examples.sleep", [{"seconds": 0.2}] * 200, priority=100)
    # It has waited an hour: a point per 10 s has lifted it to 100 at the first sweep.
    BatchTask.objects.filter(pk=low.pk).update(created_at=timezone.now() - timedelta(hours=1))
    env = {"BATCHTASKS_PRIORITY_AGING": str(PER_POINT), "BATCHTASKS_SWEEP_INTERVAL": "0.5"}

    start_worker("w1", [QUEUE], concurrency=1, env=env)

    wait_for(lambda: BatchTask.objects.get(pk=low.pk).state == TaskState.SUCCEEDED)
    waiting = BatchTask.objects.filter(pk__in=[t.pk for t in tasks], state=TaskState.NEW)
    assert waiting.count() > 100  # most of the flood still waits
