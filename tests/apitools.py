"""What the API and indicator tests share: the URLs of a task and its actions, the prefix
of problem types, and a task a worker has claimed."""

from __future__ import annotations

import json
from typing import Any

from django.urls import reverse

from batchtasks import BatchTask, TaskState, transitions

PROBLEM = "urn:batchtasks:problem:"


def detail(pk: int) -> str:
    return reverse("batchtasks:api-task", args=[pk])


def cancel(pk: int) -> str:
    return reverse("batchtasks:api-cancel", args=[pk])


def retry(pk: int) -> str:
    return reverse("batchtasks:api-retry", args=[pk])


def problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    """The problem+json body of ``response``, checked to be of ``status`` and ``slug``."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = json.loads(response.content)
    assert body["type"] == PROBLEM + slug and body["status"] == status
    return body


def running(owner: Any) -> tuple[BatchTask, transitions.Fence]:
    """A task of ``owner`` claimed by a worker, and the fence of its attempt."""
    task = BatchTask.submit("examples.progress", {}, owner=owner)
    BatchTask.objects.filter(pk=task.pk).update(state=TaskState.QUEUED, queue="batch.x")
    fence = transitions.Fence(task.pk, 1, "a" * 32)
    assert transitions.claim(fence, worker="w@h", pid=1, lease_seconds=30, using="default")
    return task, fence
