"""Per-key concurrency and rate limits: the option checks, the GCRA arithmetic, the
dispatcher stepped by hand, and real workers measured by the plugins' own records."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from batchtasks import BatchTask, BatchTaskPlugin, Priority, TaskState, batchtask, transitions
from batchtasks.core.exceptions import InvalidTaskOption
from batchtasks.core.limits import Rate, parse_rate
from batchtasks.core.registry import validate_options
from batchtasks.core.states import AttemptOutcome
from batchtasks.models import BatchTaskDefinition, BatchTaskRateLimit
from batchtasks.services.definitions import get_definition
from batchtasks.services.dispatch import dispatch_queue
from tests.conftest import purge_queues, runs_of
from tests.test_workers import max_overlap
from tests.workers import wait_for

KEYED = "batch.tests.keyed"


@batchtask("tests.per_key", queue=KEYED, max_concurrency_per_key=1)
class PerKey(BatchTaskPlugin):
    def run(self, params: Any) -> None:
        return None


@batchtask("tests.rated", queue=KEYED, rate_limit="10/m")
class Rated(BatchTaskPlugin):
    def run(self, params: Any) -> None:
        return None


@batchtask("tests.plain", queue=KEYED)
class Plain(BatchTaskPlugin):
    def run(self, params: Any) -> None:
        return None


# --- options and arithmetic (no database) ---------------------------------------
def test_rate_limit_takes_starts_per_second_minute_or_hour() -> None:
    assert parse_rate("20/s") == Rate(20, 1)
    assert parse_rate("5/m") == Rate(5, 60)
    assert parse_rate("1/h") == Rate(1, 3600)
    assert parse_rate("") is None
    clean = validate_options("x.y", {"rate_limit": "20/s"}, source="@batchtask")
    assert clean == {"rate_limit": "20/s"}
    assert validate_options("x.y", {"rate_limit": None}, source="@batchtask") == {"rate_limit": ""}


@pytest.mark.parametrize("bad", ["20", "20/d", "0/s", "-1/s", "1.5/s", " 2/s", 20])
def test_a_bad_rate_limit_says_how_to_write_one(bad: Any) -> None:
    with pytest.raises(InvalidTaskOption, match=r"'N/s', 'N/m' or 'N/h'"):
        validate_options("x.y", {"rate_limit": bad}, source="@batchtask")


def test_max_concurrency_per_key_is_a_positive_integer_or_none() -> None:
    assert validate_options("x.y", {"max_concurrency_per_key": 2}, source="s") == {
        "max_concurrency_per_key": 2
    }
    with pytest.raises(InvalidTaskOption, match="max_concurrency_per_key=0"):
        validate_options("x.y", {"max_concurrency_per_key": 0}, source="s")


def test_a_key_starts_its_burst_then_one_start_per_interval() -> None:
    rate = Rate(20, 1)  # interval 50 ms, burst 2
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert rate.budget(None, now) == 2
    tat = rate.after(rate.start(None, now), 2)  # after the burst: 100 ms ahead
    assert rate.budget(tat, now) == 0
    # The next start is due one interval after the burst, less the tolerance.
    due = rate.earliest(rate.start(tat, now), 0)
    assert rate.budget(tat, due) == 1
    assert rate.budget(tat, due - timedelta(milliseconds=1)) == 0
    # A key idle for long starts no more than its burst.
    assert rate.budget(tat, now + timedelta(hours=1)) == 2


def test_a_rate_of_one_an_hour_has_no_burst() -> None:
    rate = Rate(1, 3600)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert rate.budget(None, now) == 1
    tat = rate.after(now, 1)
    assert rate.budget(tat, now + timedelta(minutes=59)) == 0


# --- the dispatcher, stepped by hand ------------------------------------------------
uses_db = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _empty_queues() -> None:
    purge_queues([KEYED, "batch.examples.sleep", "batch.examples.noop"])


def states(tasks: list[BatchTask]) -> list[str]:
    by_id = dict(BatchTask.objects.filter(pk__in=[t.pk for t in tasks]).values_list("pk", "state"))
    return [by_id[t.pk] for t in tasks]


def finish(task_id: int) -> None:
    """Act as a worker: claim a queued task and finish it."""
    task = BatchTask.objects.get(pk=task_id)
    fence = transitions.Fence(task.pk, task.attempt, "test")
    assert transitions.claim(fence, worker="t", pid=1, lease_seconds=30, using="default")
    done = transitions.Outcome(AttemptOutcome.SUCCEEDED)
    assert transitions.end_attempt(fence, done, using="default") is not None


def queued_keys(tasks: list[BatchTask]) -> Counter[str]:
    rows = BatchTask.objects.filter(pk__in=[t.pk for t in tasks], state=TaskState.QUEUED)
    return Counter(rows.values_list("concurrency_key", flat=True))


@uses_db
def test_at_most_n_per_concurrency_key_are_in_flight_while_other_keys_proceed() -> None:
    a = [BatchTask.submit("tests.per_key", concurrency_key="a") for _ in range(3)]
    b = [BatchTask.submit("tests.per_key", concurrency_key="b") for _ in range(2)]
    none = [BatchTask.submit("tests.per_key") for _ in range(2)]
    dispatch_queue(KEYED)

    # Tasks without a key share the key "".
    assert queued_keys(a + b + none) == {"a": 1, "b": 1, "": 1}
    assert states(a) == [TaskState.QUEUED, TaskState.NEW, TaskState.NEW]

    finish(a[0].pk)
    dispatch_queue(KEYED)

    assert states(a) == [TaskState.SUCCEEDED, TaskState.QUEUED, TaskState.NEW]
    assert queued_keys(b) == {"b": 1}


@uses_db
def test_per_key_tasks_never_skip_the_dispatcher() -> None:
    get_definition("tests.per_key")
    first = BatchTask.submit("tests.per_key", concurrency_key="k")
    second = BatchTask.submit("tests.per_key", concurrency_key="k")
    many = BatchTask.submit_many("tests.per_key", [{}] * 3, concurrency_key="k")

    assert first.state == second.state == TaskState.NEW
    assert {t.state for t in many} == {TaskState.NEW}
    dispatch_queue(KEYED)
    assert queued_keys([first, second, *many]) == {"k": 1}


@uses_db
def test_a_rate_limited_type_starts_its_burst_and_defers_the_rest_to_their_earliest_start() -> None:
    tasks = list(BatchTask.submit_many("tests.rated", [{}] * 4))  # 10/m: burst 1, 6 s apart
    dispatch_queue(KEYED)

    assert states(tasks) == [TaskState.QUEUED] + [TaskState.NEW] * 3
    rows = BatchTask.objects.filter(pk__in=[t.pk for t in tasks[1:]]).order_by("id")
    waits = [t.run_after for t in rows]
    assert all(w is not None for w in waits)
    gaps = [(later - earlier).total_seconds() for earlier, later in pairwise(waits)]
    assert gaps == [pytest.approx(6.0), pytest.approx(6.0)]
    assert {t.attempt for t in rows} == {1}  # deferrals are not attempts
    row = BatchTaskRateLimit.objects.get(definition__name="tests.rated", key="")
    queued_at = BatchTask.objects.get(pk=tasks[0].pk).queued_at
    assert 5.9 < (row.tat - queued_at).total_seconds() < 6.1

    # Due again too early (moved back by hand): the key's row still says no.
    BatchTask.objects.filter(pk=tasks[1].pk).update(run_after=None)
    dispatch_queue(KEYED)
    assert states(tasks)[1] == TaskState.NEW
    assert BatchTask.objects.get(pk=tasks[1].pk).run_after is not None


@uses_db
def test_each_rate_key_has_its_own_budget() -> None:
    a = list(BatchTask.submit_many("tests.rated", [{}] * 3, rate_key="a"))
    b = list(BatchTask.submit_many("tests.rated", [{}] * 3, rate_key="b"))
    dispatch_queue(KEYED)

    assert states(a) == states(b) == [TaskState.QUEUED, TaskState.NEW, TaskState.NEW]
    keys = BatchTaskRateLimit.objects.filter(definition__name="tests.rated")
    assert sorted(keys.values_list("key", flat=True)) == ["a", "b"]


@uses_db
def test_a_key_over_its_rate_does_not_hold_up_other_keys_and_types(settings) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "DISPATCH_WINDOW": 5}
    get_definition("tests.plain")
    hot = list(BatchTask.submit_many("tests.rated", [{}] * 30, rate_key="hot", priority=50))
    cold = BatchTask.submit("tests.rated", rate_key="cold")
    plain = list(BatchTask.submit_many("tests.plain", [{}] * 3, priority=Priority.UNIMPORTANT))
    dispatch_queue(KEYED)

    assert Counter(states(hot)) == {TaskState.QUEUED: 1, TaskState.NEW: 29}
    assert states([cold]) == [TaskState.QUEUED]
    assert set(states(plain)) == {TaskState.QUEUED}
    assert BatchTask.objects.filter(pk__in=[t.pk for t in hot], run_after=None).count() == 1


@uses_db
def test_a_definition_without_key_rules_ignores_the_keys() -> None:
    tasks = [BatchTask.submit("examples.noop", concurrency_key="x", rate_key="x") for _ in range(3)]
    assert {t.state for t in tasks} == {TaskState.QUEUED}  # the fast path, as before
    stored = BatchTask.objects.get(pk=tasks[0].pk)
    assert (stored.concurrency_key, stored.rate_key) == ("x", "x")


@uses_db
def test_limits_set_in_the_definition_row_apply_at_once() -> None:
    definition = get_definition("examples.sleep")
    BatchTaskDefinition.objects.filter(pk=definition.pk).update(max_concurrency_per_key=2)
    tasks = [BatchTask.submit("examples.sleep", concurrency_key="k") for _ in range(4)]
    dispatch_queue("batch.examples.sleep")

    assert Counter(states(tasks)) == {TaskState.QUEUED: 2, TaskState.NEW: 2}


def test_a_key_longer_than_its_column_is_refused() -> None:
    with pytest.raises(InvalidTaskOption, match="concurrency_key"):
        BatchTask.submit("examples.noop", concurrency_key="x" * 201)


# --- real workers -------------------------------------------------------------------
def _limit(type_name: str, **values: Any) -> None:
    definition = get_definition(type_name)
    BatchTaskDefinition.objects.filter(pk=definition.pk).update(**values)


def _starts(record_dir: Path, tasks: list[BatchTask]) -> list[float]:
    return sorted(run[1] for t in tasks for run in runs_of(record_dir, t.pk))


def test_two_workers_start_twenty_a_second_under_rate_limit_20_per_s(
    start_worker, record_dir: Path
) -> None:
    _limit("examples.sleep", rate_limit="20/s")
    tasks = list(BatchTask.submit_many("examples.sleep", [{"seconds": 0, "record": True}] * 260))
    start_worker("w1", ["batch.examples.sleep"], concurrency=2)
    start_worker("w2", ["batch.examples.sleep"], concurrency=2)

    def started() -> list[float]:
        starts = _starts(record_dir, tasks)
        return starts if starts and starts[-1] - starts[0] >= 10.5 else []

    starts = wait_for(started, timeout=60, interval=0.5)
    in_ten_seconds = [s for s in starts if s < starts[0] + 10]
    assert 190 <= len(in_ten_seconds) <= 210, len(in_ten_seconds)


def test_a_rate_limited_type_does_not_slow_an_unlimited_one_in_its_queue(
    start_worker, record_dir: Path
) -> None:
    _limit("examples.sleep", rate_limit="1/s")
    _limit("examples.noop", queue="batch.examples.sleep")
    # Started first, so that the plugins' records show starts as the dispatcher spaced them.
    start_worker("w1", ["batch.examples.sleep"], concurrency=2)
    limited = list(
        BatchTask.submit_many("examples.sleep", [{"seconds": 0, "record": True}] * 10, priority=50)
    )
    free = list(BatchTask.submit_many("examples.noop", [{}] * 100))

    wait_for(lambda: set(states(free)) == {TaskState.SUCCEEDED}, timeout=60)

    # The hundred ran while the ten were still being spaced a second apart.
    assert len(_starts(record_dir, limited)) < 10
    assert TaskState.NEW in states(limited)
    wait_for(lambda: len(_starts(record_dir, limited)) == 10, timeout=60)
    starts = _starts(record_dir, limited)
    assert starts[-1] - starts[0] >= 8.5


def test_one_per_concurrency_key_at_a_time_and_three_keys_at_once(
    start_worker, record_dir: Path
) -> None:
    _limit("examples.sleep", max_concurrency_per_key=1)
    params = {"seconds": 0.5, "record": True}
    by_key = {
        key: list(BatchTask.submit_many("examples.sleep", [params] * 5, concurrency_key=key))
        for key in ("a", "b", "c")
    }
    start_worker("w1", ["batch.examples.sleep"], concurrency=3)
    start_worker("w2", ["batch.examples.sleep"], concurrency=3)
    everything = [t for tasks in by_key.values() for t in tasks]
    wait_for(lambda: set(states(everything)) == {TaskState.SUCCEEDED}, timeout=90)

    spans: dict[str, list[tuple[float, float]]] = {}
    for key, tasks in by_key.items():
        runs = [run for t in tasks for run in runs_of(record_dir, t.pk)]
        assert len(runs) == 5 and all(end is not None for _, _, end in runs)
        spans[key] = [(start, end) for _, start, end in runs if end is not None]
        assert max_overlap(spans[key]) == 1
    assert max_overlap([span for runs in spans.values() for span in runs]) == 3
