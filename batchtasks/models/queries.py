"""``BatchTask.objects``: the questions app code asks about tasks, by name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.db import models, router

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

    def with_owner(self) -> BatchTaskQuerySet:
        """Load each task's owner with it: joined where the users share the tasks'
        database, else read from theirs in one query more (a task database of its own)."""
        if owners_share_database(self.db):
            return self.select_related("owner")
        return self.prefetch_related("owner")

    def owned_by_username(self, username: str) -> BatchTaskQuerySet:
        """Tasks of the user with this username (none if there is no such user)."""
        users = get_user_model()._default_manager
        lookup = {users.model.USERNAME_FIELD: username}
        if owners_share_database(self.db):
            return self.filter(**{f"owner__{k}": v for k, v in lookup.items()})
        # No join, nor a subquery, across two databases: the ids are read first.
        return self.filter(owner_id__in=list(users.filter(**lookup).values_list("pk", flat=True)))

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


def owner_names(ids: set[int]) -> dict[int, str]:
    """The usernames of the users with these ids (one query, in the users' database)."""
    if not ids:
        return {}
    users = get_user_model()._default_manager
    names = users.filter(pk__in=ids).values_list("pk", users.model.USERNAME_FIELD)
    return {pk: str(name) for pk, name in names}


def owners_share_database(using: str) -> bool:
    """Whether the users are in database ``using`` too, so that a task's owner can be
    joined (not with a task database of its own)."""
    return router.db_for_read(get_user_model()) == using


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
