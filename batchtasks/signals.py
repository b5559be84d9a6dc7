"""Celery signal handlers; each calls ``transitions`` or the worker agent and nothing else."""

from __future__ import annotations

import logging
import traceback
from typing import Any

from celery import signals
from django.db import close_old_connections, router

from . import transitions
from .conf import get_settings
from .tasks import RUN_TASK_NAME

logger = logging.getLogger(__name__)

_agent: Any = None


def _is_batch_task(sender: Any) -> bool:
    return getattr(sender, "name", None) == RUN_TASK_NAME


@signals.worker_init.connect
def keep_database_connections(sender: Any = None, **kwargs: Any) -> None:
    """Stop Celery's Django fixup from closing connections around every task.

    A new PostgreSQL connection per task made batch tasks 4x slower. Django's own
    ``close_old_connections`` (``CONN_MAX_AGE``, ``CONN_HEALTH_CHECKS``) still runs
    before and after each task, so obsolete and broken connections are replaced.
    """
    app = getattr(sender, "app", None)
    if app is None or not get_settings().KEEP_DB_CONNECTIONS:
        return
    for fixup in getattr(app, "_fixups", None) or ():
        worker_fixup = getattr(fixup, "worker_fixup", None)
        if worker_fixup is not None and hasattr(worker_fixup, "db_reuse_max"):
            worker_fixup.db_reuse_max = float("inf")
            signals.task_prerun.connect(_recycle_connections, weak=False)
            signals.task_postrun.connect(_recycle_connections, weak=False)
            return
    logger.warning("batchtasks could not find Celery's Django fixup; connections not kept")


def _recycle_connections(sender: Any = None, **kwargs: Any) -> None:
    if not getattr(getattr(sender, "request", None), "is_eager", False):
        close_old_connections()


@signals.worker_ready.connect
def start_agent(sender: Any = None, **kwargs: Any) -> None:
    """Start the worker's background agent (safety-net dispatch passes)."""
    global _agent
    from .worker import WorkerAgent

    app = sender.app
    queues = sorted(app.amqp.queues.consume_from or {})
    prefetch = app.conf.worker_prefetch_multiplier
    if prefetch != 1:
        logger.warning(
            "batchtasks worker_prefetch_multiplier=%s; set CELERY_WORKER_PREFETCH_MULTIPLIER = 1 "
            "so a worker does not hold batch messages it cannot start",
            prefetch,
        )
    _agent = WorkerAgent(hostname=sender.hostname, queues=queues)
    _agent.start()


@signals.worker_shutdown.connect
def stop_agent(**kwargs: Any) -> None:
    """Stop the worker's background agent."""
    if _agent is not None:
        _agent.stop()


@signals.task_failure.connect
def fail_broken_run(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Any = None,
    **kwargs: Any,
) -> None:
    """The runner records plugin errors itself; this catches errors of the runner itself."""
    if not _is_batch_task(sender) or not args or exception is None:
        return
    from .models import BatchTask
    from .runner import error_type

    using = router.db_for_write(BatchTask)
    text = "".join(traceback.format_exception(exception))
    try:
        transitions.fail_running(
            int(args[0]), error_type(exception), str(exception), text, using=using
        )
    except Exception:
        logger.exception("batchtasks could not record a runner failure task=%s", args[0])
