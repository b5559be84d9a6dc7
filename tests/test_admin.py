"""The admin: tasks listed and shown read-only and escaped; cancel needs its permission."""

from __future__ import annotations

from datetime import timedelta
from html import unescape
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from batchtasks import BatchTask, TaskState
from batchtasks.models import BatchQueue, BatchTaskDefinition, BatchTaskOutcome
from tests.taskdb import TASK_DB

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


def test_the_list_shows_state_type_description_and_progress(admin_client: Client, tasks) -> None:
    page = admin_client.get(CHANGELIST)

    assert page.status_code == 200
    html = page.content.decode()
    assert "examples.sleep" in html and "examples.fail" in html
    assert '<progress value="42" max="100"></progress>' in html
    assert "42% halfway" in html and "progress &lt;b&gt;bold&lt;/b&gt;" in html
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


def test_the_detail_shows_an_earlier_outcome_whose_finalizers_still_run(
    admin_client: Client, tasks
) -> None:
    BatchTaskOutcome.objects.create(
        task=tasks[1],
        attempt=1,
        state=TaskState.FAILED,
        finalize_state="pending",
        finalize_attempts=2,
        finalize_error="<b>webhook</b> answered 500",
    )
    url = reverse("admin:batchtasks_batchtask_change", args=[tasks[1].pk])

    html = admin_client.get(url).content.decode()

    assert "Earlier outcomes still finalized" in html
    assert "&lt;b&gt;webhook&lt;/b&gt; answered 500" in html


def test_tasks_cannot_be_added_in_the_admin(admin_client: Client) -> None:
    assert admin_client.get(reverse("admin:batchtasks_batchtask_add")).status_code == 403


def act(client: Client, action: str, tasks: list[BatchTask], **data: str) -> str:
    """Run an admin action on ``tasks``; the page it ends on."""
    form = {"action": action, "_selected_action": [str(t.pk) for t in tasks], **data}
    return client.post(CHANGELIST, form, follow=True).content.decode()


def test_the_cancel_action_says_what_it_did_to_each_task(admin_client: Client, tasks) -> None:
    queued, failed, running = tasks

    html = act(admin_client, "cancel_tasks", tasks)

    assert "1 task cancelled; 1 running task asked to stop; 1 was already finished." in html
    assert BatchTask.objects.get(pk=queued.pk).state == TaskState.CANCELLED
    assert BatchTask.objects.get(pk=failed.pk).state == TaskState.FAILED
    assert BatchTask.objects.get(pk=running.pk).cancel_requested

    again = act(admin_client, "cancel_tasks", tasks)

    assert "0 tasks cancelled; 1 was already asked to stop; 2 were already finished." in again


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


def definition_form(**changes: str) -> dict[str, str]:
    """What the change form of a definition POSTs, with ``changes``."""
    return {
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
        **changes,
    }


def test_definitions_are_editable(admin_client: Client, tasks) -> None:
    definition = BatchTaskDefinition.objects.get(name="examples.sleep")
    url = reverse("admin:batchtasks_batchtaskdefinition_change", args=[definition.pk])

    response = admin_client.post(url, definition_form())

    assert response.status_code == 302
    definition.refresh_from_db()
    assert (definition.max_concurrency, definition.priority, definition.queue) == (
        3,
        10,
        "batch.naps",
    )
    assert BatchQueue.objects.filter(name="batch.naps").exists()


#: Queue names a crafted POST might carry into compose files and shell lines.
HOSTILE_QUEUES = [
    "batch.naps\n  evil:\n    image: x",
    "batch naps",
    "batch.'naps'",
    'batch."naps"',
    "batch.$(touch /tmp/pwned)",
    "batch.`id`;rm",
]
QUEUE_RULE = "letters, digits and . _ : -"


@pytest.mark.parametrize("queue", HOSTILE_QUEUES)
def test_a_crafted_queue_name_is_refused_by_the_definition_form_and_nothing_is_saved(
    admin_client: Client, tasks, queue: str
) -> None:
    definition = BatchTaskDefinition.objects.get(name="examples.sleep")
    before = (definition.queue, definition.max_concurrency, definition.description)
    url = reverse("admin:batchtasks_batchtaskdefinition_change", args=[definition.pk])

    response = admin_client.post(url, definition_form(queue=queue))

    assert response.status_code == 200
    assert QUEUE_RULE in unescape(response.content.decode())
    definition.refresh_from_db()
    assert (definition.queue, definition.max_concurrency, definition.description) == before
    assert not BatchQueue.objects.filter(name=queue).exists()


@pytest.mark.parametrize("queue", HOSTILE_QUEUES)
def test_a_crafted_queue_name_is_refused_by_the_queue_form(
    admin_client: Client, queue: str
) -> None:
    count = BatchQueue.objects.count()

    response = admin_client.post(
        reverse("admin:batchtasks_batchqueue_add"), {"name": queue, "max_concurrency": "2"}
    )

    assert response.status_code == 200
    assert QUEUE_RULE in unescape(response.content.decode())
    assert BatchQueue.objects.count() == count


def test_full_clean_refuses_a_bad_queue_name_with_the_rule() -> None:
    definition = BatchTaskDefinition(name="tests.x", queue="batch.x\n")
    queue = BatchQueue(name="batch x")

    with pytest.raises(ValidationError) as on_definition:
        definition.full_clean()
    with pytest.raises(ValidationError) as on_queue:
        queue.full_clean()

    assert QUEUE_RULE in on_definition.value.message_dict["queue"][0]
    assert "'batch.x\\n'" in on_definition.value.message_dict["queue"][0]
    assert QUEUE_RULE in on_queue.value.message_dict["name"][0]


def test_the_retry_action_runs_failed_tasks_again(admin_client: Client, tasks) -> None:
    html = act(admin_client, "retry_tasks", tasks)

    assert (
        "1 task will run again; 2 had not failed or been cancelled (only those can be retried)."
        in html
    )
    failed = BatchTask.objects.get(pk=tasks[1].pk)
    assert (failed.state, failed.attempt, failed.error) == (TaskState.NEW, 2, None)


def test_the_retry_action_says_why_a_task_cannot_run_again(admin_client: Client) -> None:
    old = BatchTask.submit("examples.noop", unique_key="nightly")
    BatchTask.objects.filter(pk=old.pk).update(state=TaskState.FAILED)
    BatchTask.submit("examples.noop", unique_key="nightly")  # holds the key now

    html = act(admin_client, "retry_tasks", [old])

    assert (
        "0 tasks will run again; 1 cannot: an unfinished task of its type holds its unique key."
        in html
    )
    assert BatchTask.objects.get(pk=old.pk).state == TaskState.FAILED


@pytest.fixture
def waiting() -> list[BatchTask]:
    """Two tasks still waiting for dispatch (due in an hour) and one already running."""
    later = timedelta(hours=1)
    made = [
        BatchTask.submit("examples.sleep", {"seconds": 1}, run_after=later, description="a"),
        BatchTask.submit("examples.sleep", {"seconds": 2}, run_after=later, description="<b>"),
        BatchTask.submit("examples.progress", description="busy"),
    ]
    BatchTask.objects.filter(pk=made[2].pk).update(state=TaskState.RUNNING)
    return made


def test_set_priority_asks_for_the_priority_first(admin_client: Client, waiting) -> None:
    html = act(admin_client, "set_priority", waiting)

    assert "Selected: 3. Still waiting for dispatch (state new), so they will move: 2." in html
    assert 'name="priority"' in html and 'min="-100"' in html and 'max="100"' in html
    assert 'value="set_priority"' in html and "&lt;b&gt;" in html
    assert sorted(BatchTask.objects.values_list("priority", flat=True)) == [0, 0, 0]


def test_set_priority_moves_only_the_waiting_tasks(admin_client: Client, waiting) -> None:
    html = act(admin_client, "set_priority", waiting, priority="50", apply="Set priority")

    assert (
        "2 tasks moved to priority 50; 1 was no longer waiting (only new tasks can move)." in html
    )
    priorities = dict(BatchTask.objects.values_list("pk", "priority"))
    assert [priorities[t.pk] for t in waiting] == [50, 50, 0]


def test_set_priority_refuses_a_priority_out_of_range(admin_client: Client, waiting) -> None:
    html = act(admin_client, "set_priority", waiting, priority="101", apply="Set priority")

    assert "Ensure this value is less than or equal to 100." in html
    assert sorted(BatchTask.objects.values_list("priority", flat=True)) == [0, 0, 0]


def staff_with(*codenames: str) -> Any:
    user = get_user_model().objects.create_user("clerk", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def test_set_priority_and_run_again_need_their_permissions(client: Client, waiting) -> None:
    client.force_login(staff_with("view_batchtask", "cancel_batchtask"))
    act(client, "set_priority", waiting, priority="50", apply="Set priority")
    act(client, "run_again_tasks", waiting)

    html = client.get(CHANGELIST).content.decode()

    assert "cancel_tasks" in html
    assert "set_priority" not in html and "run_again_tasks" not in html
    assert BatchTask.objects.count() == 3
    assert sorted(BatchTask.objects.values_list("priority", flat=True)) == [0, 0, 0]


def test_run_again_submits_a_copy_of_each_task(admin_client: Client) -> None:
    alice = get_user_model().objects.create_user("alice")
    old = BatchTask.submit(
        "examples.fail",
        {"message": "again"},
        owner=alice,
        priority=20,
        description="nightly import",
        fairness_key="tenant:7",
    )
    BatchTask.objects.filter(pk=old.pk).update(state=TaskState.FAILED)

    html = act(admin_client, "run_again_tasks", [old])

    new = BatchTask.objects.exclude(pk=old.pk).get()
    assert "1 new task submitted:" in html
    assert f'<a href="{reverse("admin:batchtasks_batchtask_change", args=[new.pk])}">' in html
    assert (new.type_name, new.params, new.owner, new.priority) == (
        "examples.fail",
        {"message": "again"},
        alice,
        20,
    )
    assert (new.description, new.fairness_key, new.attempt) == ("nightly import", "tenant:7", 1)
    assert new.state in (TaskState.NEW, TaskState.QUEUED)
    assert BatchTask.objects.get(pk=old.pk).state == TaskState.FAILED


def test_run_again_says_why_a_task_could_not_be_submitted(admin_client: Client, tasks) -> None:
    BatchTaskDefinition.objects.filter(name="examples.sleep").update(enabled=False)

    html = act(admin_client, "run_again_tasks", tasks)

    assert "2 new tasks submitted:" in html
    assert "1 could not be submitted: Task type &#x27;examples.sleep&#x27; is disabled" in html
    assert BatchTask.objects.count() == 5


def test_unfinished_rows_are_marked_for_live_refresh(admin_client: Client, tasks) -> None:
    queued, failed, running = tasks

    html = admin_client.get(CHANGELIST).content.decode()

    for task, final in ((queued, 0), (failed, 1), (running, 0)):
        assert f'data-task-id="{task.pk}" data-final="{final}"' in html
    assert 'data-api-url="/batchtasks/api/tasks/" data-scope="all"' in html
    assert "batchtasks/admin.js" in html
    assert f'href="{reverse("batchtasks:monitor")}"' in html


def test_staff_without_view_all_poll_only_their_own_tasks(client: Client, tasks) -> None:
    client.force_login(staff_with("view_batchtask"))

    html = client.get(CHANGELIST).content.decode()

    assert 'data-api-url="/batchtasks/api/tasks/" data-scope="own"' in html


def test_a_queue_that_types_name_cannot_be_deleted(admin_client: Client) -> None:
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
    register_worker(boot, queues=["batch.x"], concurrency=4, using=TASK_DB)

    html = admin_client.get(reverse("admin:batchtasks_batchworker_changelist")).content.decode()

    assert "w1@host" in html and "Online" in html
