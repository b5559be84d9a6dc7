"""Tasks and schedules of a deleted user lose their owner, in the task database.

The owner columns have no constraint and Django's collector leaves them alone
(``DO_NOTHING``): the users may be in another database than the tasks, where the
collector's query would find no task table. This receiver of the user model's
``post_delete`` does what ``SET_NULL`` did, on whichever database holds the tasks.
"""

from __future__ import annotations

from typing import Any

from .schedules import BatchTaskSchedule
from .tasks import BatchTask


def forget_owner(sender: Any, instance: Any, **kwargs: Any) -> None:
    """Unown the deleted user's tasks and schedules."""
    BatchTask.objects.filter(owner_id=instance.pk).update(owner=None)
    BatchTaskSchedule.objects.filter(owner_id=instance.pk).update(owner=None)
