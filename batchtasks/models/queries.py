"""``BatchTask.objects``: the questions app code asks about tasks, by name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import models

from ..core.states import FINAL_STATES

if TYPE_CHECKING:
    from .groups import TaskGroup


class BatchTaskQuerySet(models.QuerySet[Any]):
    """Adds ``for_owner``, ``unfinished``, ``finished``, ``of_type`` and ``group``."""

    def for_owner(self, owner: Any) -> BatchTaskQuerySet:
        """Tasks of ``owner`` (a user or a user id); ``None``: tasks without an owner."""
        if owner is None:
            return self.filter(owner__isnull=True)
        owner_id = getattr(owner, "pk", owner)
        if isinstance(owner_id, bool) or not isinstance(owner_id, int):
            raise TypeError(f"for_owner() takes a user, a user id or None, not {owner!r}.")
        return self.filter(owner_id=owner_id)

    def unfinished(self) -> BatchTaskQuerySet:
        """Tasks not yet final: new, queued or running (or waiting to run again)."""
        # finished_at is NULL exactly while a task is unfinished: the (owner,
        # finished_at) index then answers "my unfinished tasks".
        return self.filter(finished_at__isnull=True)

    def finished(self) -> BatchTaskQuerySet:
        """Tasks in a final state: succeeded, failed, cancelled or skipped."""
        return self.filter(state__in=FINAL_STATES)

    def of_type(self, task_type: Any) -> BatchTaskQuerySet:
        """Tasks of a type: its name, its plugin class or its ``django.tasks`` function."""
        name = _type_name(task_type)
        return self.filter(definition__name=name)

    def group(self, group_id: Any) -> TaskGroup:
        """The tasks one ``submit_many`` created, as a ``TaskGroup`` (in submit order)."""
        from .groups import TaskGroup

        return TaskGroup.get(group_id, using=self.db)


def _type_name(task_type: Any) -> str:
    if isinstance(task_type, str):
        return task_type
    name = getattr(task_type, "type_name", "") or getattr(task_type, "module_path", "")
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"of_type() takes a task type's name, its plugin class or its django.tasks "
            f"function, not {task_type!r}."
        )
    return name
