"""The admin: tasks listed and shown read-only and escaped; cancel needs its permission."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from batchtasks import BatchTask, TaskState
from batchtasks.models import BatchTaskDefinition

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:batchtasks_batchtask_changelist")


@pytest.fixture
def tasks() -> list[BatchTask]:
    made = [
        BatchTask.submit("examples.sleep", {"seconds": 1}, description="nap"),
        BatchTask.submit("examples.fail", {"message": "<script>alert(1)</script>"}),
        BatchTask.submit("examples.progress", description="progress <b>bold</b>"),
    ]
    BatchTask.objects.filter(pk=made[1].pk).update(
        state=TaskState.FAILED,
        error_type="ValueError",
        error_message="<img src=x onerror=alert(1)>",
        error_traceback="Traceback ...",
        result={"html": "<i>x</i>"},
    )
    BatchTask.objects.filter(pk=made[2].pk).update(
        state=TaskState.RUNNING, progress_percent=42, progress_message="halfway"
    )
    return made


def test_the_list_shows_state_type_owner_progress(admin_client: Client, tasks) -> None:
    page = admin_client.get(CHANGELIST)

    assert page.status_code == 200
    html = page.content.decode()
    assert "examples.sleep" in html and "examples.fail" in html
    assert '<progress value="42" max="100"' in html
    assert ">Running</span>" in html and ">Failed</span>" in html


def listed(client: Client, **query: str) -> set[int]:
    html = client.get(CHANGELIST, query).content.decode()
    return {
        pk
        for pk in BatchTask.objects.values_list("pk", flat=True)
        if reverse("admin:batchtasks_batchtask_change", args=[pk]) in html
    }


def test_filters_and_search_narrow_the_list(admin_client: Client, tasks) -> None:
    sleep, fail, progress = (t.pk for t in tasks)
    BatchTask.objects.filter(pk=sleep).update(priority=-50)

    assert listed(admin_client) == {sleep, fail, progress}
    assert listed(admin_client, state__exact="failed") == {fail}
    assert listed(admin_client, q="nap") == {sleep}
    assert listed(admin_client, priority_band="lowered") == {sleep}
    assert listed(admin_client, priority_band="normal") == {fail, progress}


def test_the_detail_shows_parameters_result_and_error_escaped(admin_client: Client, tasks) -> None:
    url = reverse("admin:batchtasks_batchtask_change", args=[tasks[1].pk])

    html = admin_client.get(url).content.decode()

    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;i&gt;x&lt;/i&gt;" in html
    assert 'name="_save"' not in html  # read-only


def test_tasks_cannot_be_added_in_the_admin(admin_client: Client) -> None:
    assert admin_client.get(reverse("admin:batchtasks_batchtask_add")).status_code == 403


def test_the_cancel_action_cancels_waiting_and_flags_running(admin_client: Client, tasks) -> None:
    ids = [str(t.pk) for t in tasks]

    page = admin_client.post(
        CHANGELIST, {"action": "cancel_tasks", "_selected_action": ids}, follow=True
    )

    html = page.content.decode()
    assert "2 tasks cancelled or asked to stop." in html
    assert "1 task was already finished" in html
    states = dict(BatchTask.objects.values_list("pk", "state"))
    assert states[tasks[0].pk] == TaskState.CANCELLED
    assert states[tasks[1].pk] == TaskState.FAILED
    assert BatchTask.objects.get(pk=tasks[2].pk).cancel_requested


def test_cancel_needs_its_permission(client: Client, tasks) -> None:
    staff = get_user_model().objects.create_user("viewer", password="pw", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_batchtask"))
    client.force_login(staff)

    html = client.get(CHANGELIST).content.decode()
    assert "cancel_tasks" not in html
    before = BatchTask.objects.get(pk=tasks[0].pk).state
    client.post(CHANGELIST, {"action": "cancel_tasks", "_selected_action": [tasks[0].pk]})
    assert BatchTask.objects.get(pk=tasks[0].pk).state == before != TaskState.CANCELLED

    staff.user_permissions.add(Permission.objects.get(codename="cancel_batchtask"))
    staff = get_user_model().objects.get(pk=staff.pk)
    client.force_login(staff)
    assert "cancel_tasks" in client.get(CHANGELIST).content.decode()


def test_definitions_are_editable(admin_client: Client, tasks) -> None:
    definition = BatchTaskDefinition.objects.get(name="examples.sleep")
    url = reverse("admin:batchtasks_batchtaskdefinition_change", args=[definition.pk])

    response = admin_client.post(
        url,
        {
            "description": "naps",
            "queue": "batch.naps",
            "max_concurrency": "3",
            "priority": "10",
            "timeout": "60",
            "soft_timeout": "",
            "max_attempts": "2",
            "max_lost_runs": "3",
            "retry_backoff": "2",
            "retry_backoff_max": "600",
            "retention": "",
            "isolation": "inline",
            "enabled": "on",
        },
    )

    assert response.status_code == 302
    definition.refresh_from_db()
    assert (definition.max_concurrency, definition.priority, definition.queue) == (
        3,
        10,
        "batch.naps",
    )
    from batchtasks.models import BatchQueue

    assert BatchQueue.objects.filter(name="batch.naps").exists()


def test_the_retry_action_runs_failed_tasks_again(admin_client: Client, tasks) -> None:
    ids = [str(t.pk) for t in tasks]

    page = admin_client.post(
        CHANGELIST, {"action": "retry_tasks", "_selected_action": ids}, follow=True
    )

    assert "1 task will run again." in page.content.decode()
    failed = BatchTask.objects.get(pk=tasks[1].pk)
    assert (failed.state, failed.attempt, failed.error) == (TaskState.NEW, 2, None)


def test_the_retry_action_says_why_a_task_cannot_run_again(admin_client: Client) -> None:
    old = BatchTask.submit("examples.noop", unique_key="nightly")
    BatchTask.objects.filter(pk=old.pk).update(state=TaskState.FAILED)
    BatchTask.submit("examples.noop", unique_key="nightly")  # holds the key now

    page = admin_client.post(
        CHANGELIST, {"action": "retry_tasks", "_selected_action": [str(old.pk)]}, follow=True
    )

    assert page.status_code == 200
    html = page.content.decode()
    assert "holds its unique_key" in html and "0 tasks will run again." in html
    assert BatchTask.objects.get(pk=old.pk).state == TaskState.FAILED


def test_a_queue_that_types_name_cannot_be_deleted(admin_client: Client) -> None:
    from batchtasks.models import BatchQueue
    from batchtasks.services.definitions import get_definition

    queue = BatchQueue.objects.get(name=get_definition("examples.noop").queue)
    unused = BatchQueue.objects.create(name="batch.unused")

    used = admin_client.post(
        reverse("admin:batchtasks_batchqueue_delete", args=[queue.pk]), {"post": "yes"}
    )
    free = admin_client.post(
        reverse("admin:batchtasks_batchqueue_delete", args=[unused.pk]), {"post": "yes"}
    )

    assert used.status_code == 403 and free.status_code == 302
    assert BatchQueue.objects.filter(pk=queue.pk).exists()
    assert not BatchQueue.objects.filter(pk=unused.pk).exists()


def test_workers_are_listed(admin_client: Client) -> None:
    from batchtasks.services.workers import Identity, register_worker

    boot = Identity("w1@host", "c" * 32, 123, "", 0.0)
    register_worker(boot, queues=["batch.x"], concurrency=4, using="default")

    html = admin_client.get(reverse("admin:batchtasks_batchworker_changelist")).content.decode()

    assert "w1@host" in html and "Online" in html
