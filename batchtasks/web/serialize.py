"""Tasks as the API's JSON, and who may see and change which tasks."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Prefetch, QuerySet
from django.urls import reverse
from django.utils.dateparse import parse_datetime

from ..core.states import STATE_CODES, UNFINISHED_STATES, WRITES, TaskState
from ..models import BatchTask, BatchTaskDependency
from ..models.queries import BatchTaskQuerySet, owners_share_database

VIEW_ALL = "batchtasks.view_all_batchtasks"
CANCEL_ANY = "batchtasks.cancel_batchtask"
RETRY_ANY = "batchtasks.retry_batchtask"

#: The columns the task JSON needs (and, joined, the type's name and the owner's username).
TASK_COLUMNS = (
    "id",
    "definition__name",
    "description",
    "state",
    "priority",
    "base_priority",
    "concurrency_key",
    "rate_key",
    "progress_percent",
    "progress_message",
    "attempt",
    "cancel_requested",
    "created_at",
    "queued_at",
    "started_at",
    "finished_at",
    "updated_at",
    "result",
    "error_type",
    "error_message",
    "pending_parents",
    "on_parent_failure",
)
#: The largest id a task can have (a PostgreSQL bigint).
BIGINT_MAX = 2**63 - 1
RETRYABLE = frozenset(WRITES["retry"].sources)
UNFINISHED = frozenset(UNFINISHED_STATES)


class Viewer:
    """What one caller may see and do; permissions are read only when a question needs them
    (the indicator's poll of one's own tasks needs none)."""

    def __init__(self, user: Any) -> None:
        self.user = user
        self.user_id: int = user.pk
        self.staff = bool(user.is_staff)

    @cached_property
    def view_all(self) -> bool:
        return bool(self.user.has_perm(VIEW_ALL))

    @cached_property
    def cancel_any(self) -> bool:
        return bool(self.user.has_perm(CANCEL_ANY))

    @cached_property
    def retry_any(self) -> bool:
        return bool(self.user.has_perm(RETRY_ANY))

    def rows(self) -> BatchTaskQuerySet:
        """All tasks, with only the columns (and joins) the JSON needs: one query a page."""
        extra = ["error_traceback"] if self.staff else []
        users = get_user_model()
        rows = BatchTask.objects.select_related("definition")
        if owners_share_database(rows.db):
            username = f"owner__{users.USERNAME_FIELD}"
            return rows.select_related("owner").only(*TASK_COLUMNS, username, *extra)
        # A task database of its own: the owners' names from theirs, one query a page.
        names = users._default_manager.only("pk", users.USERNAME_FIELD)
        owners = Prefetch("owner", queryset=names)
        return rows.only(*TASK_COLUMNS, "owner_id", *extra).prefetch_related(owners)

    def tasks(self) -> QuerySet[BatchTask]:
        """The tasks this caller may see at all."""
        rows = self.rows()
        return rows if self.view_all else rows.filter(owner_id=self.user_id)

    def own_tasks(self) -> QuerySet[BatchTask]:
        """The caller's own tasks (also for those who may see everyone's)."""
        return self.rows().filter(owner_id=self.user_id)

    def may_cancel(self, task: BatchTask) -> bool:
        """Owners may cancel their tasks; others need ``cancel_batchtask``."""
        return task.owner_id == self.user_id or self.cancel_any

    def may_retry(self, task: BatchTask) -> bool:
        """Owners may retry their tasks; others need ``retry_batchtask``."""
        return task.owner_id == self.user_id or self.retry_any


# "<", ">" and "&" as JSON escapes: a body read as HTML by mistake still runs nothing.
_INERT = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def dumps(data: Any) -> bytes:
    """``data`` as the API's JSON: UTF-8, with the characters HTML gives meaning escaped."""
    return json.dumps(data, ensure_ascii=False).translate(_INERT).encode()


def timestamp(value: datetime | None) -> str | None:
    """An aware time as ISO 8601 in UTC with microseconds, or ``None``."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _error(task: BatchTask, viewer: Viewer) -> dict[str, str] | None:
    if not task.error_type:
        return None
    error = {"type": task.error_type, "message": task.error_message}
    if viewer.staff:  # tracebacks show code and data a user need not see
        error["traceback"] = task.error_traceback
    return error


def task_json(task: BatchTask, viewer: Viewer) -> dict[str, Any]:
    """The contract's Task JSON (web-contract.md, "Task JSON")."""
    owner = task.owner.get_username() if task.owner_id is not None and task.owner else None
    return {
        "id": task.pk,
        "type": task.definition.name,
        "description": task.description,
        "owner": owner,
        "state": task.state,
        "state_code": STATE_CODES[task.state],
        "state_label": str(TaskState(task.state).label),
        "priority": task.priority,
        "base_priority": task.base_priority,
        "concurrency_key": task.concurrency_key,
        "rate_key": task.rate_key,
        "progress_percent": task.progress_percent,
        "progress_message": task.progress_message,
        "attempt": task.attempt,
        "cancel_requested": task.cancel_requested,
        "created_at": timestamp(task.created_at),
        "queued_at": timestamp(task.queued_at),
        "started_at": timestamp(task.started_at),
        "finished_at": timestamp(task.finished_at),
        "updated_at": timestamp(task.updated_at),
        "result": task.result,
        "error": _error(task, viewer),
        "can_cancel": (
            task.state in UNFINISHED and not task.cancel_requested and viewer.may_cancel(task)
        ),
        "can_retry": task.state in RETRYABLE and viewer.may_retry(task),
        "pending_parents": task.pending_parents,
        "on_parent_failure": task.on_parent_failure,
        "url": reverse("batchtasks:api-task", args=[task.pk]),
    }


def with_links(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` (one task's JSON) with the ids of its parents, in ``depends_on`` order,
    and of its children (two queries: only for one task, never for a list)."""
    links = BatchTaskDependency.objects
    body["parents"] = list(
        links.filter(child_id=body["id"]).order_by("position").values_list("parent_id", flat=True)
    )
    body["children"] = list(
        links.filter(parent_id=body["id"]).order_by("child_id").values_list("child_id", flat=True)
    )
    return body


def parse_timestamp(text: str) -> datetime | None:
    """An ISO 8601 time with an offset ("Z" or "+01:00") as an aware UTC datetime, or
    ``None`` if it is not one (no offset, no such day, or outside years 1 to 9999 in UTC)."""
    try:
        value = parse_datetime(text.strip().upper())
    except ValueError:  # well formed but impossible, such as February 30
        return None
    if value is None or value.utcoffset() is None:
        return None
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return None
