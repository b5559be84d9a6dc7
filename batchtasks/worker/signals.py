"""Celery signal handlers: set a worker up, start and stop its agent, and end attempts
whose pool process Celery saw fail. Each delegates; none holds logic of its own."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery import signals
from django.db import close_old_connections, router

from ..core.conf import get_settings
from ..db.connections import add_keepalives, state_db, use_dedicated_connections
from ..models import BatchTask
from ..services import leases
from ..services.dispatch import dispatch_queue
from ..transitions import Fence
from . import beat as _beat  # noqa: F401  (registers batchtasks.submit_scheduled)
from . import identity, refills
from . import tasks as _tasks  # registers batchtasks.run with Celery
from .completions import flush_process
from .heartbeat import attempts_of, give_back_unstarted
from .isolation import forkserver

logger = logging.getLogger(__name__)

_agent: Any = None


@signals.worker_init.connect
def set_up_worker(sender: Any = None, **kwargs: Any) -> None:
    """A new boot of a worker: its instance id, before the pool starts; and keep the
    database connections Celery's Django fixup would close around every task.

    A new PostgreSQL connection per task made batch tasks 4x slower. Django's own
    ``close_old_connections`` (``CONN_MAX_AGE``, ``CONN_HEALTH_CHECKS``) still runs
    before and after each task, so obsolete and broken connections are replaced.
    """
    identity.boot(getattr(sender, "hostname", None) or "unknown")
    if get_settings().WORKER_KEEPALIVES:
        add_keepalives(get_settings().LEASE_SECONDS)
    refills.open_channel()  # inherited by the pool processes it forks
    # Forked pool processes inherit it: a cancelled run then tells monitors (`tasks`).
    _tasks.events_enabled = bool(getattr(sender, "task_events", False))
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


@signals.worker_process_init.connect
def set_up_pool_process(**kwargs: Any) -> None:
    """A pool process (forked or spawned) has state connections of its own, and the
    template of its ``process`` attempts set up before it takes any work."""
    use_dedicated_connections(True)
    forkserver.start()


@signals.worker_process_shutdown.connect
def write_held_finishes(**kwargs: Any) -> None:
    """A pool process exits (max tasks, a warm shutdown): write what it holds first."""
    flush_process()


@signals.worker_ready.connect
def start_agent(sender: Any = None, **kwargs: Any) -> None:
    """Start the worker's agent: heartbeats, leases, stopping, safety-net dispatch, sweeps."""
    global _agent
    from .agent import WorkerAgent

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
    booted = identity.current()
    _agent = WorkerAgent(booted, queues=queues, concurrency=int(concurrency), consumer=sender)
    _agent.start()


@signals.task_received.connect
def watch_time_limits(sender: Any = None, request: Any = None, **kwargs: Any) -> None:
    """A message came: the agent reads the time limits of the runs (``timelimits``)."""
    if _agent is not None:
        _agent.watch_limits()


@signals.worker_shutdown.connect
def stop_agent(**kwargs: Any) -> None:
    """Stop the worker's agent."""
    flush_process()  # a solo worker's own (a prefork worker's main process holds none)
    if _agent is not None:
        _agent.stop()
    identity.shut_down()


@signals.task_failure.connect
def end_broken_run(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Any = None,
    **kwargs: Any,
) -> None:
    """The runner records what plugins raise itself. This ends attempts that Celery saw
    fail around it: the hard time limit, a lost pool process, or the runner's own error."""
    if exception is None or not task_id or isinstance(exception, _tasks.AttemptFailed):
        return  # an AttemptFailed's outcome is recorded already
    request = SimpleNamespace(name=getattr(sender, "name", None), id=task_id, args=args)
    using = state_db(router.db_for_write(BatchTask))
    instance = identity.instance()
    try:
        gone = [
            held
            for key in attempts_of(request)
            if (held := leases.held_attempt(Fence(*key, instance), using=using)) is not None
        ]
        if isinstance(exception, WorkerLostError):  # the runs it had not started: back
            queues, gone = give_back_unstarted(gone, using)
            for queue in queues:
                dispatch_queue(queue, using=using)
    except Exception:
        logger.exception("batchtasks could not read the runs of a failed message")
        return
    for held in gone:
        try:
            _end_broken(held, exception, using)
        except Exception:
            logger.exception("batchtasks could not record a failed run task=%s", held.task_id)


def _end_broken(held: leases.HeldAttempt, exception: BaseException, using: str) -> None:
    from .runner import error_type

    if isinstance(exception, TimeLimitExceeded):
        reason, message = leases.TIME_LIMIT, leases.time_limit_message(held)
    elif isinstance(exception, WorkerLostError):
        reason, message = leases.WORKER_LOST, leases.worker_lost_message(held)
    else:
        reason, message = error_type(exception), str(exception)
    if leases.lose(held, reason, message, using=using) is not None:
        dispatch_queue(held.queue, using=using)  # its slot is free now
