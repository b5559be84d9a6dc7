"""Submitting tasks: what is written, and bad input refused before anything is written."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from batchtasks import BatchTask, Priority, TaskState
from batchtasks.core.exceptions import (
    BatchTasksError,
    InvalidParameters,
    InvalidTaskOption,
    TaskTypeDisabled,
    UnknownTaskType,
)
from batchtasks.models import BatchTaskDefinition, BatchTaskParameters

pytestmark = pytest.mark.django_db


def counts() -> tuple[int, int]:
    return BatchTask.objects.count(), BatchTaskParameters.objects.count()


def test_submit_saves_the_task_and_its_parameters() -> None:
    user = get_user_model().objects.create_user("ann")

    task = BatchTask.submit(
        "examples.sleep", {"seconds": 2, "name": "Zoë"}, owner=user, description="nap"
    )

    task = BatchTask.objects.get(pk=task.pk)
    # Nothing limits the type and nothing waits: admitted at once, published on commit.
    assert task.state == TaskState.QUEUED
    assert task.state_code == 2
    assert (task.owner, task.description, task.attempt) == (user, "nap", 1)
    assert task.priority == Priority.NORMAL
    assert task.fairness_key == f"user:{user.pk}"
    assert task.params == {"seconds": 2, "name": "Zoë"}
    stored = task.parameters
    assert (stored.codec, stored.size) == ("json", len(bytes(stored.data)))
    assert task.type_name == "examples.sleep"


def test_a_limited_type_waits_for_the_dispatcher() -> None:
    BatchTask.submit("examples.noop")
    BatchTaskDefinition.objects.filter(name="examples.noop").update(max_concurrency=3)

    task = BatchTask.submit("examples.noop")

    assert (task.state, task.state_code, task.queued_at) == (TaskState.NEW, 1, None)


def test_a_task_waits_behind_others_of_its_type() -> None:
    first = BatchTask.submit("examples.noop", run_after=timedelta(minutes=1))
    second = BatchTask.submit("examples.noop")

    assert (first.state, second.state) == (TaskState.NEW, TaskState.NEW)


def test_default_priority_comes_from_the_live_definition() -> None:
    BatchTask.submit("examples.noop")
    BatchTaskDefinition.objects.filter(name="examples.noop").update(priority=Priority.IMPORTANT)

    assert BatchTask.submit("examples.noop").priority == Priority.IMPORTANT
    assert BatchTask.submit("examples.noop", priority=-3).priority == -3


def test_bytes_are_stored_raw_and_given_back_as_bytes() -> None:
    task = BatchTask.submit("examples.noop", b"\x00\x01binary")

    task = BatchTask.objects.get(pk=task.pk)
    assert task.params == b"\x00\x01binary"
    assert task.parameters.codec == "bytes"


def test_system_tasks_have_no_owner_and_an_explicit_key_wins() -> None:
    system = BatchTask.submit("examples.noop")
    keyed = BatchTask.submit("examples.noop", fairness_key="tenant:7")

    assert (system.owner_id, system.fairness_key) == (None, "")
    assert keyed.fairness_key == "tenant:7"


def test_run_after_accepts_a_delay_or_an_aware_datetime() -> None:
    before = timezone.now()
    delayed = BatchTask.submit("examples.noop", run_after=timedelta(minutes=5))
    at = BatchTask.submit("examples.noop", run_after=before + timedelta(hours=1))

    assert delayed.run_after >= before + timedelta(minutes=5)
    assert at.run_after == before + timedelta(hours=1)


def test_the_returned_task_is_the_stored_row_with_the_databases_times() -> None:
    BatchTask.submit("examples.noop")
    past = BatchTask.submit("examples.noop", run_after=timezone.now() - timedelta(hours=1))
    future = BatchTask.submit("examples.sleep", run_after=timezone.now() + timedelta(hours=1))

    for task in (past, future):
        stored = BatchTask.objects.get(pk=task.pk)
        fields = ("state", "queue", "fair_round", "priority", "created_at", "queued_at")
        assert [getattr(task, f) for f in fields] == [getattr(stored, f) for f in fields]
        assert task.definition.name == stored.definition.name
    # A task due now skips the dispatcher; one due later waits for it.
    assert (past.state, past.queued_at) == (TaskState.QUEUED, past.created_at)
    assert (future.state, future.queued_at, future.queue) == (TaskState.NEW, None, "")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("prepared", [True, False])
def test_submit_works_again_after_a_reconnect_and_a_rolled_back_transaction(
    settings, prepared: bool
) -> None:
    from django.db import connection

    settings.BATCHTASKS = {"PREPARED_STATEMENTS": prepared}
    BatchTask.submit("examples.noop")
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        BatchTask.submit("examples.noop")
        1 / 0  # noqa: B018
    assert BatchTask.submit("examples.noop").pk
    connection.close()  # a new connection has no prepared statements yet
    connection.ensure_connection()

    assert BatchTask.submit("examples.noop").pk
    assert counts() == (3, 3)


def test_unknown_type_names_close_matches_and_writes_nothing() -> None:
    with pytest.raises(UnknownTaskType) as error:
        BatchTask.submit("examples.slep", {})

    assert "examples.sleep" in str(error.value)
    assert "BATCHTASKS['PLUGINS']" in str(error.value)
    assert counts() == (0, 0)


def test_unserialisable_parameters_say_what_to_pass() -> None:
    with pytest.raises(InvalidParameters) as error:
        BatchTask.submit("examples.noop", {"when": datetime(2026, 1, 1)})

    assert "datetime" in str(error.value) and "'examples.noop'" in str(error.value)
    assert counts() == (0, 0)


def test_nan_is_refused_as_parameter() -> None:
    with pytest.raises(InvalidParameters):
        BatchTask.submit("examples.noop", {"x": float("nan")})
    assert counts() == (0, 0)


@pytest.mark.parametrize("params", [{"x": "\ud800"}, {"\udfff": 1}], ids=["value", "key"])
def test_parameters_with_lone_surrogates_are_refused(params: object) -> None:
    # Not encodable as UTF-8, so not storable as JSON text.
    with pytest.raises(InvalidParameters) as error:
        BatchTask.submit("examples.noop", params)

    assert "'examples.noop'" in str(error.value)
    assert counts() == (0, 0)


def test_parameters_over_the_limit_name_the_limit(settings) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "MAX_PARAMS_BYTES": 100}

    with pytest.raises(InvalidParameters) as error:
        BatchTask.submit("examples.noop", {"blob": "x" * 200})

    assert "the limit is 100" in str(error.value)
    assert "MAX_PARAMS_BYTES" in str(error.value)
    assert counts() == (0, 0)


@pytest.mark.parametrize("priority", [101, -101, "high", True, 1.5])
def test_priority_out_of_range_is_refused(priority: object) -> None:
    with pytest.raises(InvalidTaskOption) as error:
        BatchTask.submit("examples.noop", priority=priority)

    assert "-100" in str(error.value) and "100" in str(error.value)
    assert counts() == (0, 0)


def test_disabled_type_is_refused() -> None:
    BatchTask.submit("examples.noop")
    BatchTaskDefinition.objects.filter(name="examples.noop").update(enabled=False)
    before = counts()

    with pytest.raises(TaskTypeDisabled) as error:
        BatchTask.submit("examples.noop")

    assert "enable" in str(error.value)
    assert counts() == before


@pytest.mark.parametrize(
    "kwargs",
    [
        {"run_after": datetime(2030, 1, 1)},
        {"run_after": "tomorrow"},
        {"description": "x" * 501},
        {"description": 5},
        {"fairness_key": "k" * 201},
        {"unique_key": 42},
        {"owner": get_user_model()(username="unsaved")},
        {"description": "nul \x00 inside"},
        {"unique_key": "nul\x00"},
        {"run_after": timedelta(days=10**8)},
        {"run_after": timedelta(days=-(10**6))},
    ],
    ids=[
        "naive-run-after",
        "text-run-after",
        "long-text",
        "int-text",
        "long-key",
        "int-key",
        "unsaved-owner",
        "nul-in-text",
        "nul-in-key",
        "delay-past-year-9999",
        "delay-before-year-1",
    ],
)
def test_other_bad_options_are_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidTaskOption):
        BatchTask.submit("examples.noop", **kwargs)
    assert counts() == (0, 0)


def test_every_error_is_a_batchtasks_error() -> None:
    for call in (
        lambda: BatchTask.submit("nope"),
        lambda: BatchTask.submit("examples.noop", {1, 2}),
        lambda: BatchTask.submit("examples.noop", priority=500),
    ):
        with pytest.raises(BatchTasksError):
            call()


def test_submit_many_inserts_every_task_in_order_with_consecutive_turns() -> None:
    tasks = BatchTask.submit_many("examples.noop", [{"n": i} for i in range(25)])

    saved = list(BatchTask.objects.filter(pk__in=[t.pk for t in tasks]).order_by("pk"))
    assert [t.params for t in saved] == [{"n": i} for i in range(25)]
    rounds = [t.fair_round for t in saved]
    assert rounds == list(range(rounds[0], rounds[0] + 25))
    assert BatchTaskParameters.objects.count() == 25


def test_submit_many_takes_turns_past_32_bits() -> None:
    waiting = BatchTask.submit("examples.noop", run_after=timedelta(minutes=1))
    BatchTask.objects.filter(pk=waiting.pk).update(fair_round=2**40)

    tasks = BatchTask.submit_many("examples.noop", [{"n": i} for i in range(3)])

    saved = BatchTask.objects.filter(pk__in=[t.pk for t in tasks]).order_by("pk")
    assert [t.fair_round for t in saved] == [2**40 + 1, 2**40 + 2, 2**40 + 3]
    assert [t.fair_round for t in tasks] == [2**40 + 1, 2**40 + 2, 2**40 + 3]


def test_submit_many_writes_nothing_if_one_parameter_set_is_bad() -> None:
    with pytest.raises(InvalidParameters):
        BatchTask.submit_many("examples.noop", [{"ok": 1}, {"bad": {1}}, {"ok": 2}])
    assert counts() == (0, 0)


def test_submit_many_of_nothing_is_nothing() -> None:
    assert BatchTask.submit_many("examples.noop", []) == []
    with pytest.raises(InvalidTaskOption):
        BatchTask.submit_many("examples.noop", {"a": 1})
    assert counts() == (0, 0)


def test_rolled_back_submit_leaves_nothing(django_capture_on_commit_callbacks) -> None:
    with (
        django_capture_on_commit_callbacks() as callbacks,
        pytest.raises(ZeroDivisionError),
        transaction.atomic(),
    ):
        BatchTask.submit("examples.noop")
        1 / 0  # noqa: B018

    assert counts() == (0, 0)
    assert callbacks == []


def test_unique_key_returns_the_unfinished_task_and_raises_its_priority() -> None:
    BatchTask.submit("examples.noop")
    BatchTaskDefinition.objects.filter(name="examples.noop").update(max_concurrency=1)
    BatchTask.objects.all().delete()
    first = BatchTask.submit("examples.noop", {"v": 1}, unique_key="report:42")
    again = BatchTask.submit(
        "examples.noop", {"v": 2}, unique_key="report:42", priority=Priority.IMPORTANT
    )
    other = BatchTask.submit("examples.noop", unique_key="report:43")

    assert again.pk == first.pk
    assert other.pk != first.pk
    first.refresh_from_db()
    assert first.priority == Priority.IMPORTANT
    assert first.params == {"v": 1}
    assert counts() == (2, 2)


def test_a_finished_task_does_not_block_its_unique_key() -> None:
    first = BatchTask.submit("examples.noop", unique_key="k")
    BatchTask.objects.filter(pk=first.pk).update(state=TaskState.SUCCEEDED)

    second = BatchTask.submit("examples.noop", unique_key="k")

    assert second.pk != first.pk
