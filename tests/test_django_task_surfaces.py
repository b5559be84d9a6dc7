"""``django.tasks`` functions on batchtasks' other surfaces, with real workers: enqueued from
a view, limited by their type's options, and shown in the admin, the monitor and the API
like any other batch task.

The functions (tests/django_task_surface_functions.py) note each run in a file and wait
for the test to open their gate, so "running" is a state the test sees, not a moment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils.html import strip_tags

from batchtasks import BatchTask, TaskState
from batchtasks.backends.django_tasks import TaskResultStatus
from batchtasks.core.exceptions import TaskCancelled
from batchtasks.core.states import FINAL_STATES
from batchtasks.services.definitions import get_definition
from tests import django_task_surface_functions as functions
from tests.conftest import purge_queues, runs_of
from tests.test_workers import max_overlap
from tests.workers import wait_for

MODULE = "tests.django_task_surface_functions"
GATED = f"{MODULE}.gated"
QUEUES = [
    f"batch.{MODULE}.{name}" for name in ("gated", "limited_by_options", "limited_by_settings")
]
CHANGELIST = reverse("admin:batchtasks_batchtask_changelist")
MONITOR = reverse("batchtasks:monitor")


@pytest.fixture(autouse=True)
def _empty_queues() -> None:
    """No message of an earlier test's task is left for this test's workers."""
    purge_queues(QUEUES)


def open_gates(media_root: Path, *results: Any) -> None:
    for result in results:
        path = functions.gate(media_root, result.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def state_of(result: Any) -> str:
    return BatchTask.objects.get(pk=int(result.id)).state


def running(result: Any) -> Any:
    """Wait until the task runs; the result refreshed."""
    wait_for(lambda: state_of(result) == TaskState.RUNNING, 60)
    result.refresh()
    return result


def finished(result: Any) -> Any:
    """Wait until the task is final; the result refreshed."""
    wait_for(lambda: state_of(result) in FINAL_STATES, 60)
    result.refresh()
    return result


# --- enqueued from a view ---------------------------------------------------------------


@pytest.mark.worker
@pytest.mark.urls("tests.django_task_views")
def test_a_function_enqueued_from_a_view_waits_then_runs_then_returns_its_value(
    client: Client, start_worker, media_root: Path
) -> None:
    response = client.post(reverse("surface-enqueue"), {"label": "monthly report"})
    assert response.status_code == 202
    result = functions.gated.get_result(response.json()["id"])
    assert response.json()["status"] == result.status == TaskResultStatus.READY

    start_worker(queues=QUEUES)
    assert running(result).status == TaskResultStatus.RUNNING
    assert result.started_at is not None and result.finished_at is None
    open_gates(media_root, result)

    assert finished(result).status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == "monthly report done"
    assert (result.args, result.kwargs, result.errors) == (["monthly report"], {}, [])
    assert result.worker_ids[0].startswith("w1@")


# --- type options: max_concurrency and priority ----------------------------------------


LIMITED = [
    pytest.param(functions.limited_by_options, id="from-TASKS-OPTIONS"),
    pytest.param(functions.limited_by_settings, id="BATCHTASKS-TYPES-over-OPTIONS"),
]


def started(record_dir: Path, results: list[Any]) -> int:
    return sum(len(runs_of(record_dir, int(r.id))) for r in results)


@pytest.mark.worker
@pytest.mark.parametrize("function", LIMITED)
def test_a_functions_max_concurrency_holds_on_a_worker_with_more_slots(
    function: Any, start_worker, media_root: Path, record_dir: Path
) -> None:
    results = [function.enqueue() for _ in range(6)]
    start_worker(queues=QUEUES, concurrency=4)

    # Two start and wait at their gates; with 4 slots free, no third may join them.
    wait_for(lambda: started(record_dir, results) >= 2, 60)
    open_gates(media_root, *results)
    for result in results:
        finished(result)

    assert [r.status for r in results] == [TaskResultStatus.SUCCESSFUL] * 6
    assert sorted(r.return_value for r in results) == sorted(int(r.id) for r in results)
    runs = [run for r in results for run in runs_of(record_dir, int(r.id))]
    assert len(runs) == 6 and all(end is not None for _, _, end in runs)
    assert max_overlap([(start, end) for _, start, end in runs]) == 2
    assert get_definition(function.module_path).max_concurrency == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("function", "type_priority"),
    [
        pytest.param(functions.limited_by_options, 30, id="from-TASKS-OPTIONS"),
        pytest.param(functions.limited_by_settings, -20, id="BATCHTASKS-TYPES-over-OPTIONS"),
    ],
)
def test_a_functions_type_priority_applies_unless_the_task_sets_its_own(
    function: Any, type_priority: int
) -> None:
    default = function.enqueue()
    own = function.using(priority=50).enqueue()

    priorities = dict(BatchTask.objects.values_list("pk", "priority"))
    assert priorities[int(default.id)] == type_priority
    assert priorities[int(own.id)] == 50
    assert get_definition(function.module_path).priority == type_priority


# --- the admin --------------------------------------------------------------------------


def change_page(client: Client, result: Any) -> str:
    url = reverse("admin:batchtasks_batchtask_change", args=[int(result.id)])
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


def listed_row(client: Client, result: Any) -> str:
    """The text of the task's row in the admin's list."""
    html = client.get(CHANGELIST).content.decode()
    link = reverse("admin:batchtasks_batchtask_change", args=[int(result.id)])
    start = html.rindex("<tr", 0, html.index(f'href="{link}"'))
    return " ".join(strip_tags(html[start : html.index("</tr>", start)]).split())


@pytest.mark.worker
def test_the_admin_lists_a_running_function_task_and_shows_its_parameters_and_result(
    admin_client: Client, start_worker, media_root: Path
) -> None:
    start_worker(queues=QUEUES)
    result = running(functions.gated.enqueue("nightly report"))

    row = listed_row(admin_client, result)
    assert GATED in row and "Running" in row and "Queued" not in row

    open_gates(media_root, result)
    finished(result)

    row = listed_row(admin_client, result)
    assert GATED in row and "Succeeded" in row and "Running" not in row
    detail = change_page(admin_client, result)
    assert GATED in detail
    assert "&quot;args&quot;" in detail and "&quot;nightly report&quot;" in detail
    assert "&quot;nightly report done&quot;" in detail


@pytest.mark.django_db
def test_the_admin_cancel_action_cancels_a_waiting_function_task(admin_client: Client) -> None:
    result = functions.gated.enqueue("never runs")
    form = {"action": "cancel_tasks", "_selected_action": [result.id]}

    html = admin_client.post(CHANGELIST, form, follow=True).content.decode()

    assert "1 task cancelled" in html
    assert state_of(result) == TaskState.CANCELLED
    cancelled = functions.gated.get_result(result.id)
    assert cancelled.status == TaskResultStatus.FAILED
    (error,) = cancelled.errors
    assert error.exception_class_path == "batchtasks.core.exceptions.TaskCancelled"
    assert error.exception_class is TaskCancelled
    row = listed_row(admin_client, result)
    assert GATED in row and "Cancelled" in row


# --- the monitor and the API ------------------------------------------------------------


def running_section(html: str) -> str:
    return html[html.index('id="batchtasks-running"') : html.index('id="batchtasks-failures"')]


@pytest.mark.worker
def test_the_monitor_shows_a_running_function_task_with_its_type_name(
    admin_client: Client, start_worker, media_root: Path
) -> None:
    start_worker(queues=QUEUES)
    result = running(functions.gated.enqueue("on the monitor"))

    page = running_section(admin_client.get(MONITOR).content.decode())
    fragment = running_section(admin_client.get(MONITOR, {"fragment": "1"}).content.decode())
    for html in (page, fragment):
        assert f'data-task-id="{result.id}"' in html
        assert GATED in strip_tags(html) and "w1@" in html
    api = admin_client.get(reverse("batchtasks:api-task", args=[int(result.id)])).json()
    assert (api["type"], api["state"]) == (GATED, TaskState.RUNNING)

    open_gates(media_root, result)
    finished(result)

    after = running_section(admin_client.get(MONITOR).content.decode())
    assert f'data-task-id="{result.id}"' not in after and "Nothing is running." in after
