"""The one Celery task: run an attempt of a batch task, named by its id and attempt.

The outcome is written to the ``BatchTask`` row first; then the task ends the way Celery
and its monitors (Flower, with workers started with ``-E``) understand: a failed attempt
raises ``AttemptFailed`` (FAILURE), one that runs again raises ``Retry`` (RETRY), a
cancelled one sends ``task-revoked`` and raises ``Ignore`` (REVOKED); a success may be
written a moment after the task returns (``worker.completions``). None of them stores
a result (``ignore_result``), requeues or rejects the message: the message is acked.
The one exception: a message whose claim could not reach the database for a lease
(``runner.ClaimUnanswered``: nothing of it ran) is rejected and requeued, so another
worker takes it at once; left acked, its tasks would stay ``queued``, holding slots of
their types' limits, until the sweeper published them again (``REPUBLISH_AFTER``). A
message acked when taken (``worker.request``: runs measured short) has nothing to give
back: its tasks wait for that sweep.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from celery import shared_task
from celery.exceptions import Ignore, Reject, Retry
from django.db import router

from ..core.states import AttemptOutcome, TaskState
from ..db.connections import state_db
from ..models import BatchTask
from ..transport.publish import RUN_MANY_TASK_NAME, RUN_TASK_NAME, parse_message_id
from . import batches, runner
from .completions import process_completions
from .progress import state_lock

logger = logging.getLogger(__name__)

#: Whether this worker sends task events (``-E``); set at its start (``signals``).
events_enabled = False


class AttemptFailed(Exception):
    """Raised to Celery after a failed attempt's outcome is recorded on its row, so that
    monitors show the failure; the worker's signal handlers leave it alone."""


#: Both run tasks: acked after the run (or when taken, if the message says so:
#: ``worker.request``), requeued if the pool process dies, no result.
RUN_OPTIONS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "Request": "batchtasks.worker.request:RunRequest",
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "typing": False,
    "throws": (AttemptFailed,),
}


@shared_task(name=RUN_TASK_NAME, **RUN_OPTIONS)
def run_batch_task(
    self: Any, task_id: int, attempt: int | None = None, type_name: str = ""
) -> None:
    """Claim attempt ``attempt`` of the ``BatchTask`` row ``task_id`` and run it (the
    message is only a claim check; ``type_name`` is there for monitors). Messages of older
    releases carry only the id: their attempt is read from the message id."""
    if attempt is None:
        parsed = parse_message_id(self.request.id or "")
        if parsed is None or parsed[0] != int(task_id):
            return
        attempt = parsed[1]
    db = state_db(router.db_for_write(BatchTask))
    with process_completions(db).message(), given_back_unclaimed():
        ended = runner.execute(
            int(task_id),
            int(attempt),
            worker=self.request.hostname or "unknown",
            using=db,  # the state connection's alias: not looked up and checked again
            hold=True,
        )
    if ended is not None:
        report_outcome(self, int(task_id), int(attempt), ended.state)


@shared_task(name=RUN_MANY_TASK_NAME, **RUN_OPTIONS)
def run_batch_tasks(self: Any, runs: list[list[int]], type_name: str = "") -> None:
    """Claim and run several ``[task id, attempt]`` of one type, one after another (see
    ``worker.batches``). Monitors see one task: FAILURE if any attempt failed."""
    pairs = [(int(task_id), int(attempt)) for task_id, attempt in runs]
    with given_back_unclaimed():
        outcomes = batches.execute_many(pairs, worker=self.request.hostname or "unknown")
    failed = [o for _, o in outcomes if o.kind == AttemptOutcome.FAILED]
    if failed:
        first = ": ".join(part for part in (failed[0].error_type, failed[0].error_message) if part)
        raise AttemptFailed(f"{len(failed)} of {len(outcomes)} attempts failed; the first: {first}")


@contextlib.contextmanager
def given_back_unclaimed() -> Iterator[None]:
    """Give the message back to the broker if its claim could not reach the database
    (see the module text)."""
    try:
        yield
    except runner.ClaimUnanswered as error:
        logger.warning("batchtasks message given back: its claim could not reach the database")
        raise Reject(error, requeue=True) from error


def report_outcome(task: Any, task_id: int, attempt: int, state: str) -> None:
    """End the Celery task as the recorded outcome says (see the module text)."""
    if state == TaskState.CANCELLED:
        if events_enabled:
            task.send_event("task-revoked", terminated=False, signum=None, expired=False)
        raise Ignore(f"batch task {task_id} cancelled")
    if state not in (TaskState.FAILED, TaskState.NEW):
        return
    error = _recorded_error(task_id)
    if state == TaskState.FAILED:
        raise AttemptFailed(error)
    raise Retry(f"attempt {attempt} failed; runs again", exc=AttemptFailed(error))


def _recorded_error(task_id: int) -> str:
    """``"<error type>: <message>"`` of the attempt just ended, as its row holds it."""
    using = state_db(router.db_for_write(BatchTask))
    with state_lock:
        rows = BatchTask.objects.using(using).filter(pk=task_id)
        row = rows.values_list("error_type", "error_message").first()
    return ": ".join(part for part in row if part) if row else ""
