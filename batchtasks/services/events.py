"""Sending the app signals of ``batchtasks.signals`` (read the row only for receivers)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.dispatch import Signal

from .. import signals
from ..core.exceptions import UnknownTaskType
from ..core.registry import registry
from ..core.states import FINAL_STATES
from ..models import BatchTask

logger = logging.getLogger(__name__)


def plugin_of(type_name: str) -> Any:
    """The sender of a type's signals: its plugin class (``None`` if not known here)."""
    try:
        return registry.get(type_name).plugin
    except UnknownTaskType:
        return None


def submitted(tasks: Iterable[BatchTask], type_name: str) -> None:
    """Send ``task_submitted`` for each of ``tasks``, just inserted."""
    sender = plugin_of(type_name)
    if not signals.task_submitted.has_listeners(sender):
        return
    for task in tasks:
        _send(signals.task_submitted, sender, task, type_name=type_name)


def started(task_id: int, type_name: str, attempt: int, *, using: str) -> None:
    """Send ``task_started`` for the attempt just claimed."""
    sender = plugin_of(type_name)
    if signals.task_started.has_listeners(sender):
        task = _load(task_id, using)
        if task is not None:
            _send(signals.task_started, sender, task, type_name=type_name, attempt=attempt)


def finished(task_id: int, type_name: str, *, using: str) -> None:
    """Send ``task_finished`` for a task just made final."""
    sender = plugin_of(type_name)
    if signals.task_finished.has_listeners(sender):
        task = _load(task_id, using)
        if task is not None and task.state in FINAL_STATES:
            _send(signals.task_finished, sender, task, type_name=type_name, state=task.state)


def finished_many(tasks: Iterable[tuple[int, str]], *, using: str) -> None:
    """``finished`` for each ``(task id, type name)``."""
    for task_id, type_name in tasks:
        finished(task_id, type_name, using=using)


def _load(task_id: int, using: str) -> BatchTask | None:
    return (
        BatchTask.objects.using(using)
        .select_related("definition")
        .with_owner()
        .filter(pk=task_id)
        .first()
    )


def _send(signal: Signal, sender: Any, task: BatchTask, **kwargs: Any) -> None:
    send_robustly(signal, sender, task.pk, task=task, **kwargs)


def send_robustly(signal: Signal, sender: Any, task_id: Any, **kwargs: Any) -> None:
    """Send ``signal``; a receiver that raises is logged and changes nothing."""
    for receiver, error in signal.send_robust(sender, **kwargs):
        if isinstance(error, Exception):
            logger.error(
                "batchtasks signal receiver failed receiver=%r task=%s",
                receiver,
                task_id,
                exc_info=error,
            )
