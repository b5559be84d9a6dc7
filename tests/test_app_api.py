"""What app code gets beyond submit: waiting, query helpers, groups, declared parameters,
the app signals and the public names of ``batchtasks``."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import Client

import batchtasks
from batchtasks import BatchTask, BatchTaskPlugin, InvalidParameters, TaskState, batchtask
from batchtasks.core.exceptions import BatchTasksError, InvalidTaskOption
from batchtasks.core.registry import registry
from batchtasks.models import BatchTaskParameters
from tests import django_task_functions as functions
from tests.signal_receivers import NOTES_ENV
from tests.workers import wait_for


@dataclass
class ReportParams:
    year: int
    title: str = ""
    format: Literal["csv", "xlsx"] = "csv"
    ratio: float | None = None
    tags: list[str] | None = None
    pages: int = batchtasks.param(1, minimum=1, maximum=500)
    note: str = batchtasks.param("", max_length=5)
    copies: int = batchtasks.param(1, maximum=3)


class DeclaredReport(BatchTaskPlugin):
    Params = ReportParams

    @classmethod
    def validate_params(cls, params: Any) -> None:
        super().validate_params(params)
        if params["year"] < 2000:
            raise InvalidParameters("year: no reports before 2000.", fields={"year": "before 2000"})

    def run(self, params: Any) -> Any:
        return params


@pytest.fixture(autouse=True)
def _declared_report() -> Any:
    """The type, registered for this module's tests only (others list the web types)."""
    batchtask("tests.declared_report", description="Declares its parameters.", web=True)(
        DeclaredReport
    )
    yield
    registry.unregister("tests.declared_report")


def test_public_names_are_importable_from_batchtasks() -> None:
    from batchtasks.core.plugin import LocalContext

    assert batchtasks.LocalContext is LocalContext
    assert issubclass(batchtasks.InvalidParameters, batchtasks.BatchTasksError)
    assert batchtasks.signals.task_finished is not None
    for name in batchtasks.__all__:
        assert getattr(batchtasks, name) is not None, name


# --- declared parameters -----------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({}, {"year": "required"}),
        ({"year": 2024, "colour": "red"}, {"colour": "unknown parameter"}),
        ({"year": "2024"}, {"year": "expected an integer, got '2024'"}),
        ({"year": True}, {"year": "expected an integer, got True"}),
        ({"year": 2024, "format": "pdf"}, {"format": "expected 'csv' or 'xlsx', got 'pdf'"}),
        ({"year": 2024, "ratio": "x"}, {"ratio": "expected a number or null, got 'x'"}),
        ({"year": 2024, "tags": {}}, {"tags": "expected a list or null, got {}"}),
        ({"year": 1999}, {"year": "before 2000"}),
        ({"year": 2024, "ratio": float("nan")}, {"ratio": "expected a number or null, got nan"}),
        ({"year": 2024, "ratio": -float("inf")}, {"ratio": "expected a number or null, got -inf"}),
        ({"year": 2024, "pages": 0}, {"pages": "must be from 1 to 500, got 0"}),
        ({"year": 2024, "pages": 501}, {"pages": "must be from 1 to 500, got 501"}),
        ({"year": 2024, "copies": 4}, {"copies": "must be at most 3, got 4"}),
        ({"year": 2024, "note": "sixsix"}, {"note": "must be at most 5 characters long, got 6"}),
    ],
)
def test_parameters_that_do_not_fit_the_declaration_are_refused_naming_the_fields(
    params: dict[str, Any], fields: dict[str, str]
) -> None:
    with pytest.raises(InvalidParameters) as refused:
        BatchTask.submit("tests.declared_report", params)

    assert refused.value.fields == fields
    assert all(name in str(refused.value) for name in fields)
    assert not BatchTask.objects.exists()


@pytest.mark.django_db
def test_parameters_that_fit_are_stored_as_given() -> None:
    params = {"year": 2024, "ratio": 1, "format": "xlsx", "tags": ["a"]}

    task = BatchTask.submit("tests.declared_report", params)

    assert BatchTask.objects.get(pk=task.pk).params == params


@pytest.mark.django_db
def test_submit_many_names_the_parameter_set_that_does_not_fit() -> None:
    with pytest.raises(InvalidParameters) as refused:
        BatchTask.submit_many("tests.declared_report", [{"year": 2024}, {"year": "x"}])

    assert refused.value.fields == {"[1].year": "expected an integer, got 'x'"}
    assert not BatchTask.objects.exists()


def test_a_bound_that_is_no_finite_number_is_a_configuration_error() -> None:
    with pytest.raises(batchtasks.ConfigurationError, match=r"param\(maximum=inf\)"):
        batchtasks.param(1, maximum=float("inf"))
    with pytest.raises(batchtasks.ConfigurationError, match=r"param\(max_length='5'\)"):
        batchtasks.param("", max_length="5")


def test_params_that_are_not_a_dataclass_are_refused_at_registration() -> None:
    class Loose(BatchTaskPlugin):
        Params = dict

        def run(self, params: Any) -> None:
            return None

    with pytest.raises(batchtasks.ConfigurationError, match="dataclass"):
        batchtask("tests.loose_params")(Loose)
    assert "tests.loose_params" not in registry


@pytest.mark.django_db
def test_the_api_answers_one_field_error_per_bad_parameter(admin_user: Any) -> None:
    client = Client()
    client.force_login(admin_user)
    body = {"type": "tests.declared_report", "params": {"year": "x", "colour": 1}}

    response = client.post("/batchtasks/api/tasks/", json.dumps(body), "application/json")

    assert response.status_code == 400
    errors = {e["field"]: e["message"] for e in response.json()["errors"]}
    assert errors == {
        "params.year": "expected an integer, got 'x'",
        "params.colour": "unknown parameter",
    }
    assert not BatchTask.objects.exists()


@pytest.mark.django_db
def test_the_reference_plugins_refuse_bad_parameters_at_submit() -> None:
    with pytest.raises(InvalidParameters) as mail:
        BatchTask.submit("mail.merge", {"template": "welcome", "users": "active", "batch_size": 0})
    with pytest.raises(InvalidParameters) as report:
        BatchTask.submit("reports.users_csv", {"active": "yes"})

    assert list(mail.value.fields) == ["batch_size"]
    assert report.value.fields == {"active": "expected true or false or null, got 'yes'"}
    assert not BatchTask.objects.exists()


# --- query helpers -----------------------------------------------------------------
@pytest.mark.django_db
def test_query_helpers_select_by_owner_state_and_type() -> None:
    ada, bob = (get_user_model().objects.create_user(name) for name in ("ada", "bob"))
    mine = BatchTask.submit("examples.noop", owner=ada)
    waiting = BatchTask.submit("examples.sleep", owner=ada, run_after=timedelta(hours=1))
    theirs = BatchTask.submit("examples.noop", owner=bob)
    nobody = functions.add.enqueue(1, 2)
    waiting.cancel()

    ids = lambda queryset: sorted(queryset.values_list("pk", flat=True))  # noqa: E731
    assert ids(BatchTask.objects.for_owner(ada)) == [mine.pk, waiting.pk]
    assert ids(BatchTask.objects.for_owner(bob.pk)) == [theirs.pk]
    assert ids(BatchTask.objects.for_owner(None)) == [int(nobody.id)]
    assert ids(BatchTask.objects.for_owner(ada).unfinished()) == [mine.pk]
    assert ids(BatchTask.objects.finished()) == [waiting.pk]
    assert ids(BatchTask.objects.of_type("examples.noop")) == [mine.pk, theirs.pk]
    assert ids(BatchTask.objects.of_type(registry.get("examples.sleep").plugin)) == [waiting.pk]
    assert ids(BatchTask.objects.of_type(functions.add)) == [int(nobody.id)]
    with pytest.raises(TypeError):
        BatchTask.objects.for_owner("ada")


# --- groups --------------------------------------------------------------------------
@pytest.mark.django_db
def test_submit_many_returns_a_group_that_can_be_found_again() -> None:
    group = BatchTask.submit_many("examples.noop", [{}, {}, {}])

    found = BatchTask.objects.group(str(group.id))

    assert [t.pk for t in found] == [t.pk for t in group]
    assert all(t.group_id == group.id for t in found)
    status = group.status()
    assert (status.total, status.progress, status.finished) == (3, 0.0, False)
    assert sum(status.counts.values()) == 3
    with pytest.raises(LookupError):
        BatchTask.objects.group("6f1d3f8e-0000-4000-8000-000000000000")
    with pytest.raises(LookupError):
        BatchTask.objects.group("not-a-uuid")


@pytest.mark.django_db
def test_a_group_works_as_a_list_in_a_query_and_when_copied() -> None:
    group = BatchTask.submit_many("examples.noop", [{}, {}])

    assert BatchTaskParameters.objects.filter(task__in=group).count() == 2
    assert [t.pk for t in group[:1]] == [group[0].pk]
    assert len(copy.copy(group)) == 2


@pytest.mark.django_db
def test_a_group_counts_its_final_tasks_as_done() -> None:
    group = BatchTask.submit_many("examples.sleep", [{}, {}], run_after=timedelta(hours=1))
    group[0].cancel()

    status = group.status()

    assert status.counts == {TaskState.CANCELLED: 1, TaskState.NEW: 1}
    assert status.progress == 50.0 and not status.finished


# --- waiting -------------------------------------------------------------------------
@pytest.mark.django_db
def test_waiting_inside_the_submitting_transaction_is_refused() -> None:
    task = BatchTask.submit("examples.noop")
    with pytest.raises(BatchTasksError, match="inside a transaction"):
        task.wait(timeout=1)
    with pytest.raises(BatchTasksError, match="inside a transaction"):
        BatchTask.submit_many("examples.noop", [{}]).wait(timeout=1)


@pytest.mark.django_db
def test_waiting_for_a_final_task_returns_it_at_once() -> None:
    task = BatchTask.submit("examples.sleep", run_after=timedelta(hours=1))
    task.cancel()

    assert task.wait(timeout=0).state == TaskState.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_waiting_longer_than_the_timeout_raises_timeout_error() -> None:
    task = BatchTask.submit("examples.sleep", run_after=timedelta(hours=1))

    with pytest.raises(TimeoutError):
        task.wait(timeout=0.3)
    with pytest.raises(TimeoutError):
        async_to_sync(task.wait_async)(timeout=0.3)


@pytest.mark.worker
def test_wait_returns_the_finished_task_and_a_group_waits_for_all(start_worker) -> None:
    start_worker(queues=["batch.examples.noop", "batch.examples.fail"])
    ok, bad = BatchTask.submit("examples.noop"), BatchTask.submit("examples.fail")
    group = BatchTask.submit_many("examples.noop", [{}] * 5)

    assert ok.wait(timeout=60).state == TaskState.SUCCEEDED
    assert async_to_sync(bad.wait_async)(timeout=60).state == TaskState.FAILED
    assert bad.error is not None and bad.error.type == "ValueError"
    status = group.wait(timeout=60)
    assert status.counts == {TaskState.SUCCEEDED: 5} and status.progress == 100.0
    assert all(task.state == TaskState.SUCCEEDED for task in group)  # reloaded
    assert async_to_sync(group.wait_async)(timeout=0).succeeded


# --- signals -------------------------------------------------------------------------
@pytest.mark.worker
def test_each_app_signal_is_sent_once_per_event(start_worker, tmp_path, monkeypatch) -> None:
    notes_path = tmp_path / "signals"
    monkeypatch.setenv(NOTES_ENV, str(notes_path))
    queues = ["batch.examples.noop", "batch.examples.flaky", "batch.examples.sleep"]
    worker = start_worker(queues=queues, env={NOTES_ENV: str(notes_path)})
    flaky, noop = BatchTask.submit("examples.flaky"), BatchTask.submit("examples.noop")
    later = {"run_after": timedelta(hours=1), "unique_key": "k"}
    cancelled = BatchTask.submit("examples.sleep", run_after=timedelta(hours=1))
    cancelled.cancel()
    superseded = BatchTask.submit("examples.sleep", **later)
    newer = BatchTask.submit("examples.sleep", **later, on_conflict="supersede")
    flaky.wait(timeout=60), noop.wait(timeout=60)

    expected = [
        *(f"submitted {t.pk}" for t in (flaky, noop, cancelled, superseded, newer)),
        f"started {flaky.pk} examples.flaky attempt=1 running",
        f"started {flaky.pk} examples.flaky attempt=2 running",
        f"started {noop.pk} examples.noop attempt=1 running",
        f"finished {flaky.pk} examples.flaky succeeded succeeded",
        f"finished {noop.pk} examples.noop succeeded succeeded",
        f"finished {cancelled.pk} examples.sleep cancelled cancelled",
        f"finished {superseded.pk} examples.sleep skipped skipped",
    ]

    def notes() -> list[str]:
        return notes_path.read_text().splitlines() if notes_path.exists() else []

    wait_for(lambda: len(notes()) >= len(expected), 60)
    lines = notes()
    for start in expected:
        assert sum(line.startswith(start) for line in lines) == 1, (start, lines)
    assert len(lines) == len(expected)
    in_worker = [line for line in lines if line.startswith(("started", f"finished {noop.pk}"))]
    assert all(f"pid={worker.pid}" not in line for line in in_worker)  # in its pool processes
    assert all(f"pid={os.getpid()}" not in line for line in in_worker)


def test_an_unknown_type_in_of_type_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        BatchTask.objects.of_type(object())
    with pytest.raises(InvalidTaskOption):
        batchtask("bad name!")


@pytest.mark.django_db
def test_a_receiver_that_raises_does_not_break_the_submit(caplog) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    batchtasks.signals.task_submitted.connect(broken)
    try:
        with transaction.atomic():
            task = BatchTask.submit("examples.noop")
    finally:
        batchtasks.signals.task_submitted.disconnect(broken)

    assert BatchTask.objects.filter(pk=task.pk).exists()
    assert "receiver bug" in caplog.text
