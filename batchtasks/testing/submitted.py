"""The tasks submitted on one database since a moment: the rows with a larger id."""

from __future__ import annotations

from typing import Any

from django.db.models import Max

from ..models import BatchTask


def last_id(using: str) -> int:
    """The largest task id on ``using`` now (0 with no tasks)."""
    return BatchTask.objects.using(using).aggregate(last=Max("pk"))["last"] or 0


class Submitted:
    """The tasks inserted on ``using`` after this object was made (and, once ``close``
    was called, no later than that)."""

    def __init__(self, using: str) -> None:
        self.using = using
        self._after = last_id(using)
        self._upto: int | None = None

    def close(self) -> None:
        """Stop counting tasks submitted from now on."""
        self._upto = last_id(self.using)

    def tasks(self) -> list[BatchTask]:
        """The tasks, as their rows are now, oldest first (deleted ones are gone)."""
        rows = BatchTask.objects.using(self.using).filter(pk__gt=self._after)
        if self._upto is not None:
            rows = rows.filter(pk__lte=self._upto)
        return list(rows.select_related("definition", "parameters").order_by("pk"))


class TaskList:
    """Reading helpers over a list of submitted tasks (``tasks`` is the list)."""

    @property
    def tasks(self) -> list[BatchTask]:
        raise NotImplementedError

    @property
    def types(self) -> list[str]:
        """The type name of each task, oldest first."""
        return [task.type_name for task in self.tasks]

    @property
    def params(self) -> list[Any]:
        """The decoded parameters of each task, oldest first."""
        return [task.params for task in self.tasks]

    def of_type(self, type_name: str) -> list[BatchTask]:
        """The tasks of type ``type_name``, oldest first."""
        return [task for task in self.tasks if task.type_name == type_name]

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> BatchTask:
        return self.tasks[index]
