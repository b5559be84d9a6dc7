"""Celery signal handlers; each calls ``transitions`` or the worker agent and nothing else."""

from __future__ import annotations

import logging
from typing import Any

from celery import signals
from django.db import close_old_connections, router

from . import lease
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
    """Start the worker's agent: heartbeats, leases, safety-net dispatch, sweeps."""
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
    concurrency = getattr(getattr(sender, "controller", None), "concurrency", 0) or 0
    _agent = WorkerAgent(
        hostname=sender.hostname,
        queues=queues,
        concurrency=int(concurrency),
        pool=getattr(sender, "pool", None),
    )
    _agent.start()


@signals.worker_shutdown.connect
def stop_agent(**kwargs: Any) -> None:
    """Stop the worker's background agent."""
    if _agent is not None:
        _agent.stop()


@signals.task_failure.connect
def end_broken_run(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    **kwargs: Any,
) -> None:
    """The runner records what plugins raise itself. This ends attempts that Celery saw
    fail around it: the hard time limit, a lost pool process, or the runner's own error."""
    if not _is_batch_task(sender) or exception is None or not task_id:
        return
    from billiard.exceptions import TimeLimitExceeded, WorkerLostError

    from .db import state_db
    from .models import BatchTask
    from .runner import error_type
    from .worker import parse_message_id

    key = parse_message_id(task_id)
    if key is None:
        return
    using = state_db(router.db_for_write(BatchTask))
    try:
        held = lease.held_attempt(*key, using=using)
        if held is None:
            return
        if isinstance(exception, TimeLimitExceeded):
            lease.lose(held, lease.TIME_LIMIT, lease.time_limit_message(held), using=using)
        elif isinstance(exception, WorkerLostError):
            lease.lose(held, lease.WORKER_LOST, lease.worker_lost_message(held), using=using)
        else:
            lease.lose(held, error_type(exception), str(exception), using=using)
    except Exception:
        logger.exception("batchtasks could not record a failed run task=%s", task_id)
