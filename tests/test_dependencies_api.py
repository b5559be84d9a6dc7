"""Dependencies over the JSON API (every response checked against the OpenAPI document)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from batchtasks import BatchTask, TaskState
from tests.openapi import ApiClient

pytestmark = pytest.mark.django_db

TASKS = reverse("batchtasks:api-tasks")


def submit(api: ApiClient, **body: Any) -> Any:
    return api.post(TASKS, {"type": "examples.progress", "params": {"steps": 1}, **body})


def test_a_submit_with_depends_on_waits_and_shows_its_parents(api: ApiClient, alice) -> None:
    parent = BatchTask.submit("examples.progress", {"steps": 1}, owner=alice)

    response = submit(api, depends_on=[parent.pk], on_parent_failure="run")

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["state"], body["state_code"], body["pending_parents"]) == ("blocked", 1, 1)
    assert (body["on_parent_failure"], body["parents"], body["children"]) == (
        "run",
        [parent.pk],
        [],
    )
    seen = api.get(reverse("batchtasks:api-task", args=[parent.pk])).json()
    assert seen["children"] == [body["id"]]


def test_nobody_may_depend_on_a_task_they_cannot_see(api: ApiClient) -> None:
    bob = get_user_model().objects.create_user("bob")
    hidden = BatchTask.submit("examples.progress", {"steps": 1}, owner=bob)
    before = BatchTask.objects.count()

    response = submit(api, depends_on=[hidden.pk])

    assert response.status_code == 400
    assert f"cannot see or that do not exist: {hidden.pk}" in response.json()["detail"]
    assert BatchTask.objects.count() == before


@pytest.mark.parametrize(
    "body",
    [{"depends_on": "1"}, {"depends_on": [0]}, {"depends_on": [True]}, {"on_parent_failure": "x"}],
)
def test_bad_dependency_fields_are_refused(api: ApiClient, body: dict[str, Any]) -> None:
    response = submit(api, **body)

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == next(iter(body))


def test_cancel_with_cascade_cancels_the_waiting_children(api: ApiClient, alice) -> None:
    parent = BatchTask.submit("examples.progress", {"steps": 1}, owner=alice)
    child = BatchTask.submit(
        "examples.progress", {"steps": 1}, owner=alice, depends_on=[parent], on_parent_failure="run"
    )

    response = api.post(reverse("batchtasks:api-cancel", args=[parent.pk]) + "?cascade=true")

    assert response.status_code == 200, response.content
    child.refresh_from_db()
    assert child.state == TaskState.CANCELLED
