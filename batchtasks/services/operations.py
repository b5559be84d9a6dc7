"""What ``BatchTask``'s API methods do: installed into the models by the app (the seam
described in ``batchtasks.models.tasks``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import router

from .. import transitions
from ..models import BatchTask, TaskGroup
from . import depends, events
from . import submit as submitting
from .dispatch import dispatch_on_commit
from .validation import check_priority


def _db(task: BatchTask) -> str:
    return task._state.db or router.db_for_write(BatchTask, instance=task)


class Operations:
    """``BatchTask.submit``, ``submit_many``, ``cancel``, ``retry`` and ``set_priority``."""

    def submit(self, type_name: str, params: Any = None, **options: Any) -> BatchTask:
        return submitting.submit(type_name, params, **options)

    def submit_many(self, type_name: str, params_list: Iterable[Any], **options: Any) -> TaskGroup:
        return submitting.submit_many(type_name, params_list, **options)

    def cancel(self, task: BatchTask, *, cascade: bool = False) -> bool:
        db = _db(task)
        done = transitions.cancel(task.pk, using=db, cascade=cascade)
        if done.freed_queue:
            dispatch_on_commit(done.freed_queue, using=db)
        if done.ended:
            events.finished(task.pk, task.definition.name, using=db)
        depends.act_on(done.settled, db)
        task.refresh_from_db(fields=["state", "cancel_requested", "finished_at"])
        return done.applied

    def retry(self, task: BatchTask) -> bool:
        db = _db(task)
        applied = transitions.retry(task.pk, using=db)
        if applied:
            dispatch_on_commit(task.definition.queue, using=db)
        task.refresh_from_db()
        return applied

    def set_priority(self, task: BatchTask, priority: int) -> bool:
        value = check_priority(priority)
        applied = transitions.set_priority(task.pk, value, using=_db(task))
        if applied:
            task.priority = value
        return applied


operations = Operations()
