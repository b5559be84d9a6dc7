"""``django.tasks`` functions run as batch tasks by ``batchtasks.backends.BatchTasksBackend``."""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

import tests
from batchtasks import BatchTask, TaskState
from batchtasks.backends.django_tasks import (
    InvalidTask,
    TaskResultDoesNotExist,
    TaskResultStatus,
    register,
    task_enqueued,
)
from batchtasks.core.exceptions import UnknownTaskType
from batchtasks.core.registry import registry
from batchtasks.core.states import FINAL_STATES
from batchtasks.models import BatchTaskDefinition
from batchtasks.services.definitions import get_definition, sync_definitions
from tests import django_task_functions as functions
from tests import django_task_unlisted as unlisted
from tests.conftest import set_limit
from tests.workers import wait_for

FUNCTIONS = ("add", "explode", "stamp", "greet", "which_attempt", "count_to")
QUEUES = [f"batch.tests.django_task_functions.{name}" for name in FUNCTIONS]


def finished(result):
    """Wait until the task is final, then refresh ``result`` from the database."""
    wait_for(lambda: BatchTask.objects.get(pk=int(result.id)).state in FINAL_STATES, 60)
    result.refresh()
    return result


def test_a_task_function_is_a_batch_task_type_named_by_its_module_path() -> None:
    spec = registry.get("tests.django_task_functions.add")

    assert spec.plugin.django_task.func is functions.add.func
    assert spec.definition_values()["queue"] == "batch.tests.django_task_functions.add"


@pytest.mark.django_db
def test_enqueue_stores_a_waiting_task_with_the_arguments() -> None:
    result = functions.add.enqueue(2, b=3)

    row = BatchTask.objects.get(pk=int(result.id))
    assert result.status == TaskResultStatus.READY
    assert row.type_name == "tests.django_task_functions.add"
    assert row.params == {"args": [2], "kwargs": {"b": 3}}
    assert (result.args, result.kwargs) == ([2], {"b": 3})
    assert functions.add.get_result(result.id).status == TaskResultStatus.READY


@pytest.mark.django_db
def test_enqueue_and_get_result_work_from_async_code() -> None:
    async def enqueue_and_read():
        result = await functions.add.aenqueue(1, 2)
        return await functions.add.aget_result(result.id)

    fetched = async_to_sync(enqueue_and_read)()

    assert (fetched.status, fetched.args) == (TaskResultStatus.READY, [1, 2])


@pytest.mark.django_db
def test_enqueue_sends_djangos_task_enqueued_signal() -> None:
    seen = []

    def receive(sender, task_result, **kwargs):
        seen.append(task_result.id)

    task_enqueued.connect(receive)
    try:
        result = functions.add.enqueue(1, 2)
    finally:
        task_enqueued.disconnect(receive)

    assert seen == [result.id]


@pytest.mark.django_db
def test_arguments_that_are_not_json_are_refused_before_anything_is_stored() -> None:
    with pytest.raises(TypeError):
        functions.add.enqueue(object(), 1)

    assert not BatchTask.objects.exists()


def test_a_naive_run_after_is_refused_with_djangos_error() -> None:
    with pytest.raises(InvalidTask, match="aware"):
        functions.add.using(run_after=timezone.now().replace(tzinfo=None))


@pytest.mark.django_db
def test_a_timedelta_run_after_holds_the_task_back_that_long_from_the_databases_clock() -> None:
    assert settings.USE_TZ
    delayed = functions.add.using(run_after=timedelta(minutes=5))

    result = delayed.enqueue(1, 2)
    later = delayed.enqueue(3, 4)

    first, second = (BatchTask.objects.get(pk=int(r.id)) for r in (result, later))
    assert result.status == TaskResultStatus.READY
    # Counted from each enqueue (its row's insert), not from the .using() call.
    assert first.run_after - first.created_at == timedelta(minutes=5)
    assert second.run_after - second.created_at == timedelta(minutes=5)
    assert first.state == second.state == TaskState.NEW


@pytest.mark.django_db
def test_an_unknown_result_id_does_not_exist() -> None:
    with pytest.raises(TaskResultDoesNotExist):
        functions.add.get_result("123456789")
    with pytest.raises(TaskResultDoesNotExist):
        functions.add.get_result("not-a-number")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("state", "status"),
    [
        (TaskState.NEW, TaskResultStatus.READY),
        (TaskState.QUEUED, TaskResultStatus.READY),
        (TaskState.RUNNING, TaskResultStatus.RUNNING),
        (TaskState.SUCCEEDED, TaskResultStatus.SUCCESSFUL),
        (TaskState.FAILED, TaskResultStatus.FAILED),
        (TaskState.CANCELLED, TaskResultStatus.FAILED),
        (TaskState.SKIPPED, TaskResultStatus.FAILED),
    ],
)
def test_each_batch_state_shows_as_a_django_status(state: str, status: str) -> None:
    result = functions.add.enqueue(1, 1)
    BatchTask.objects.filter(pk=int(result.id)).update(state=state)

    result.refresh()

    assert result.status == status


@pytest.mark.worker
def test_an_enqueued_function_runs_and_its_result_becomes_successful(start_worker) -> None:
    start_worker(queues=QUEUES)
    result = functions.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY

    finished(result)

    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.errors == []
    assert result.attempts == 1 and result.worker_ids[0].startswith("w1@")
    assert result.enqueued_at <= result.started_at <= result.finished_at


@pytest.mark.worker
def test_the_worker_sends_djangos_started_and_finished_signals(start_worker, media_root) -> None:
    start_worker(queues=QUEUES)
    ok, bad = functions.add.enqueue(1, 1), functions.explode.enqueue("no")

    finished(ok), finished(bad)

    # task_finished is sent after the outcome is written: the row is final a moment before.
    path = media_root / "django-task-signals"
    notes = wait_for(lambda: len(lines := path.read_text().splitlines()) >= 4 and lines, 60)
    assert sorted(notes) == sorted(
        [
            f"started {ok.id} RUNNING",
            f"finished {ok.id} SUCCESSFUL",
            f"started {bad.id} RUNNING",
            f"finished {bad.id} FAILED",
        ]
    )


@pytest.mark.worker
def test_a_raising_function_fails_with_its_exception_class_path(start_worker) -> None:
    start_worker(queues=QUEUES)
    result = functions.explode.enqueue("the printer is on fire")

    finished(result)

    assert result.status == TaskResultStatus.FAILED
    (error,) = result.errors
    assert error.exception_class is functions.PrinterOnFire
    assert "the printer is on fire" in error.traceback
    with pytest.raises(ValueError, match="failed"):
        result.return_value  # noqa: B018


@pytest.mark.worker
def test_an_async_function_runs(start_worker) -> None:
    start_worker(queues=QUEUES)
    result = functions.greet.enqueue("Ada")

    finished(result)

    assert result.return_value == "Hello, Ada!"


@pytest.mark.worker
def test_a_function_taking_context_sees_its_attempt(start_worker) -> None:
    start_worker(queues=QUEUES)
    result = functions.which_attempt.enqueue()

    finished(result)

    assert result.return_value == 1


@pytest.mark.worker
def test_a_deferred_function_does_not_run_before_run_after(start_worker) -> None:
    start_worker(queues=QUEUES)
    run_after = timezone.now() + timedelta(seconds=2)
    result = functions.stamp.using(run_after=run_after).enqueue()

    finished(result)

    assert result.return_value >= run_after.timestamp()
    assert result.started_at >= run_after


@pytest.mark.worker
def test_a_higher_priority_function_overtakes_waiting_ones(start_worker) -> None:
    set_limit("tests.django_task_functions.stamp", 1)  # one at a time: the rest wait in line
    low = [functions.stamp.using(priority=-10).enqueue() for _ in range(3)]
    high = functions.stamp.using(priority=50).enqueue()
    start_worker(queues=QUEUES)

    for result in [*low, high]:
        finished(result)

    # The first was admitted at once; the high one is next, before the other two.
    assert low[0].return_value < high.return_value < min(r.return_value for r in low[1:])


@pytest.mark.worker
def test_a_function_reports_progress_and_stops_when_cancelled(start_worker) -> None:
    start_worker(queues=QUEUES)
    done = functions.count_to.enqueue(4)
    slow = functions.count_to.enqueue(10_000, pause=0.05)
    row = BatchTask.objects.get(pk=int(slow.id))
    wait_for(lambda: BatchTask.objects.get(pk=row.pk).progress_percent > 0, 60)

    row.cancel()

    finished(done), finished(slow)
    assert done.return_value == 4
    assert BatchTask.objects.get(pk=int(done.id)).progress_message == "4 of 4"
    assert slow.status == TaskResultStatus.FAILED
    assert BatchTask.objects.get(pk=row.pk).state == TaskState.CANCELLED
    assert [e.exception_class_path for e in slow.errors] == [
        "batchtasks.core.exceptions.TaskCancelled"
    ]


@pytest.mark.django_db
def test_a_task_cancelled_while_waiting_fails_with_an_error_saying_so() -> None:
    cancelled = functions.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 2)
    BatchTask.objects.get(pk=int(cancelled.id)).cancel()

    cancelled.refresh()

    assert cancelled.status == TaskResultStatus.FAILED
    (error,) = cancelled.errors
    assert error.exception_class_path == "batchtasks.core.exceptions.TaskCancelled"


@pytest.fixture
def forgotten_functions():
    """The test functions' module as a worker that never imported it sees it."""
    saved = sys.modules.pop("tests.django_task_functions")
    for name in FUNCTIONS:
        registry.unregister(f"tests.django_task_functions.{name}")
    yield
    sys.modules["tests.django_task_functions"] = saved
    # The import in the test set the package's attribute to its new module: a later
    # `from tests import django_task_functions` must get the registered functions' module.
    tests.django_task_functions = saved  # type: ignore[attr-defined]
    for name in FUNCTIONS:
        register(getattr(functions, name))


def test_an_unknown_function_type_is_found_by_importing_the_module_its_row_recorded(
    forgotten_functions,
) -> None:
    registry.learn_function("tests.django_task_functions.add", "tests.django_task_functions")

    spec = registry.get("tests.django_task_functions.add")

    assert spec.plugin.django_task.module_path == "tests.django_task_functions.add"


@pytest.fixture
def forgotten_unlisted():
    """The module of functions no setting names, as a process that never imported it."""
    saved = sys.modules.pop(unlisted.__name__)
    for name in ("double", "double_apart"):
        registry.unregister(f"{unlisted.__name__}.{name}")
    yield
    sys.modules[unlisted.__name__] = saved
    register(unlisted.double), register(unlisted.double_apart)


@override_settings(INSTALLED_APPS=[*settings.INSTALLED_APPS, "tests"])
def test_a_type_name_alone_imports_no_module_even_of_an_installed_app(
    forgotten_unlisted,
) -> None:
    with pytest.raises(UnknownTaskType):
        registry.get(f"{unlisted.__name__}.double")

    assert unlisted.__name__ not in sys.modules


# --- functions a worker was not told of -------------------------------------------------

ELSEWHERE = """
from batchtasks.backends.django_tasks import FRAMEWORK

if FRAMEWORK == "django.tasks":
    from django.tasks import task
else:
    from django_tasks import task


@task
def far_away() -> int:
    return 1
"""


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """A module of a function that this process can import and its workers cannot."""
    name = f"elsewhere_{uuid.uuid4().hex[:12]}"
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / f"{name}.py").write_text(ELSEWHERE)
    monkeypatch.syspath_prepend(str(folder))
    yield importlib.import_module(name)
    registry.unregister(f"{name}.far_away")
    sys.modules.pop(name, None)


@pytest.mark.worker
@pytest.mark.parametrize("function", ["double", "double_apart"], ids=["inline", "process"])
def test_a_worker_imports_the_module_of_a_function_no_setting_names(
    start_worker, function: str
) -> None:
    assert unlisted.__name__ not in settings.BATCHTASKS["PLUGINS"]
    start_worker(queues=[f"batch.{unlisted.__name__}.{function}"])
    result = getattr(unlisted, function).enqueue(21)

    finished(result)

    assert result.status == TaskResultStatus.SUCCESSFUL, result.errors
    value = result.return_value
    assert (value if function == "double" else value["double"]) == 42


@pytest.mark.worker
def test_a_function_whose_module_a_worker_cannot_import_fails_naming_module_and_setting(
    start_worker, elsewhere: ModuleType
) -> None:
    start_worker(queues=[f"batch.{elsewhere.__name__}.far_away"])
    result = elsewhere.far_away.enqueue()

    finished(result)

    row = BatchTask.objects.get(pk=int(result.id))
    assert (row.state, row.attempt) == (TaskState.FAILED, 1)
    assert row.error_type == "batchtasks.core.exceptions.FunctionModuleNotImported"
    assert repr(elsewhere.__name__) in row.error_message
    assert "BATCHTASKS['PLUGINS']" in row.error_message


@pytest.mark.django_db
def test_a_functions_definition_row_records_its_module_and_a_sync_fills_older_rows() -> None:
    functions.add.enqueue(1, 2)
    row = BatchTaskDefinition.objects.get(name="tests.django_task_functions.add")
    assert row.function_module == "tests.django_task_functions"
    assert get_definition("examples.noop").function_module == ""
    # As a row written before rows recorded the module.
    BatchTaskDefinition.objects.filter(pk=row.pk).update(function_module="")

    sync_definitions()

    row.refresh_from_db()
    assert row.function_module == "tests.django_task_functions"


@pytest.mark.django_db
def test_naming_a_type_over_http_imports_no_module(client, monkeypatch) -> None:
    module = "django.contrib.auth.management.commands.changepassword"
    monkeypatch.delitem(sys.modules, module, raising=False)
    client.force_login(get_user_model().objects.create_user("ada", password="-"))

    response = client.post(
        reverse("batchtasks:api-tasks"),
        {"type": f"{module}.Command", "params": {}},
        content_type="application/json",
    )

    assert response.status_code == 400, response.content
    assert module not in sys.modules
