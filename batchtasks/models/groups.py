"""``TaskGroup``: the tasks of one ``submit_many``, followed together."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.apps import apps
from django.db import router
from django.db.models import Count, Sum

from ..core.states import FINAL_STATES, TaskState
from .waiting import await_until, refuse_in_transaction, wait_until


def _model() -> Any:
    # BatchTask imports this module; the app registry breaks the circle.
    return apps.get_model("batchtasks", "BatchTask")


@dataclass(frozen=True)
class GroupStatus:
    """Where the tasks of a group are, read in one query."""

    #: How many tasks the group has.
    total: int
    #: How many are in each state (states without tasks are left out).
    counts: dict[str, int]
    #: Progress of the whole group, 0 to 100: final tasks count as 100.
    progress: float

    @property
    def finished(self) -> bool:
        """Whether every task of the group is final."""
        return sum(self.counts.get(s, 0) for s in FINAL_STATES) == self.total

    @property
    def succeeded(self) -> bool:
        """Whether every task of the group succeeded."""
        return self.counts.get(TaskState.SUCCEEDED, 0) == self.total


class TaskGroup(list[Any]):
    """The tasks of one ``submit_many`` (a list of them, in submit order) and their group
    id, stored on each task: ``BatchTask.objects.group(id)`` finds them again."""

    def __init__(
        self, tasks: Iterable[Any] = (), group_id: uuid.UUID | None = None, *, using: str = ""
    ) -> None:
        # Built from an iterable alone, as a list is: Django rebuilds ``__in`` values with
        # ``type(value)(generator)``, and copies do too.
        super().__init__(tasks)
        self.id = group_id
        self.using = using

    def __repr__(self) -> str:
        return f"<TaskGroup {self.id} of {len(self)} tasks>"

    @classmethod
    def get(cls, group_id: Any, *, using: str | None = None) -> TaskGroup:
        """The group with this id (its tasks as stored now); ``LookupError`` if none."""
        try:
            key = group_id if isinstance(group_id, uuid.UUID) else uuid.UUID(str(group_id))
        except ValueError:
            raise LookupError(f"{group_id!r} is not a task group id (a UUID).") from None
        db = using or router.db_for_write(_model())
        tasks = list(_model().objects.using(db).filter(group_id=key).order_by("pk"))
        if not tasks:
            raise LookupError(f"No tasks belong to group {key} (or they were purged).")
        return cls(tasks, key, using=db)

    def then(self, type_name: str, params: Any = None, **options: Any) -> Any:
        """Submit one task that runs once every task of the group is final (a chord
        without a result backend): ``BatchTask.submit`` with ``depends_on=`` the group.
        It reads their results with ``self.parent_results()``."""
        if "depends_on" in options:
            raise TypeError("then() depends on the group's tasks; it takes no depends_on.")
        options.setdefault("using", self.using or None)
        return _model().submit(type_name, params, depends_on=[t.pk for t in self], **options)

    def _db(self) -> str:
        return self.using or router.db_for_write(_model())

    def tasks(self) -> Any:
        """A fresh queryset of the group's tasks."""
        return _model().objects.using(self._db()).filter(group_id=self.id).order_by("pk")

    def status(self) -> GroupStatus:
        """State counts and aggregate progress, from one query."""
        rows = (
            self.tasks()
            .order_by()
            .values("state")
            .annotate(n=Count("pk"), percent=Sum("progress_percent"))
        )
        counts, points = {}, 0
        for row in rows:
            counts[row["state"]] = row["n"]
            final = row["state"] in FINAL_STATES
            points += 100 * row["n"] if final else (row["percent"] or 0)
        total = sum(counts.values())
        return GroupStatus(total, counts, points / total if total else 100.0)

    def refresh(self) -> GroupStatus:
        """Reload every task of the list from the database; return the status."""
        fresh = {task.pk: task for task in self.tasks()}
        self[:] = [fresh.get(task.pk, task) for task in self]
        return self.status()

    def wait(self, timeout: float | None = None) -> GroupStatus:
        """Block until every task is final; reload them; ``TimeoutError`` after ``timeout``."""
        refuse_if_waiting_in_transaction(self)
        wait_until(lambda: self.status().finished, timeout, f"Task group {self.id}")
        return self.refresh()

    async def wait_async(self, timeout: float | None = None) -> GroupStatus:
        """``wait`` for async code."""
        status = sync_to_async(self.status)

        async def done() -> bool:
            return (await status()).finished

        await sync_to_async(refuse_if_waiting_in_transaction)(self)
        await await_until(done, timeout, f"Task group {self.id}")
        return await sync_to_async(self.refresh)()


def refuse_if_waiting_in_transaction(group: TaskGroup) -> None:
    if not group.status().finished:
        refuse_in_transaction(group._db(), f"Task group {group.id}")
