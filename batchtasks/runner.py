"""Run one claimed task: call its plugin, throttle its progress, write its outcome."""

from __future__ import annotations

import json
import logging
import time
import traceback
from dataclasses import dataclass
from datetime import datetime

from django.db import DatabaseError, router

from . import dispatch, lease, retries, transitions
from .codecs import decode
from .conf import get_settings
from .db import reconnecting, state_db
from .exceptions import ResultNotSerializable, TaskCancelled
from .models import BatchQueue, BatchTask, BatchTaskDefinition
from .plugin import BatchTaskPlugin
from .registry import registry
from .states import TaskState

logger = logging.getLogger(__name__)

MAX_MESSAGE = 10_000
MAX_TRACEBACK = 64_000


class RunnerContext:
    """The plugin's view of its run: throttled progress writes and cancel checks."""

    def __init__(self, claim: transitions.Claim, worker: str, using: str) -> None:
        self.task_id: int | None = claim.task_id
        self.attempt = claim.attempt
        self.worker = worker
        self.using = using
        self._interval = get_settings().PROGRESS_INTERVAL
        self._last_write = float("-inf")
        self._last_check = time.monotonic()
        self._pending: tuple[int, str] | None = None
        self._cancel = False

    def report_progress(self, percent: int, message: str) -> None:
        self._pending = (percent, message)
        if time.monotonic() - self._last_write >= self._interval:
            self.flush()

    def flush(self) -> None:
        """Write the pending progress now."""
        if self._pending is None or self.task_id is None:
            return
        percent, message = self._pending
        self._pending = None
        self._last_write = self._last_check = time.monotonic()
        task_id, attempt = self.task_id, self.attempt
        try:
            cancel = reconnecting(
                lambda: transitions.record_progress(
                    task_id, attempt, percent, message, using=self.using
                ),
                self.using,
            )
        except DatabaseError:  # progress is not worth failing the task for
            logger.warning("batchtasks progress not written task=%s", task_id, exc_info=True)
            return
        self._cancel = self._cancel or cancel is None or cancel

    def cancel_requested(self) -> bool:
        if not self._cancel and time.monotonic() - self._last_check >= self._interval:
            self._last_check = time.monotonic()
            task_id = self.task_id
            assert task_id is not None
            try:
                self._cancel = reconnecting(
                    lambda: lease.cancel_requested(task_id, using=self.using), self.using
                )
            except DatabaseError:
                logger.warning("batchtasks cancel check failed task=%s", task_id, exc_info=True)
        return self._cancel

    def take_pending(self) -> tuple[int, str] | None:
        """The progress not written yet (it goes out with the outcome)."""
        pending, self._pending = self._pending, None
        return pending


def execute(task_id: int, *, worker: str, using: str | None = None) -> None:
    """Claim task ``task_id`` and run it to an outcome; a message for a task that is not
    queued (a duplicate, a stale redelivery, a cancelled task) runs nothing."""
    db = state_db(using or router.db_for_write(BatchTask))
    lease_seconds = get_settings().LEASE_SECONDS
    # While PostgreSQL is away, wait for it rather than drop the message or the outcome
    # (then the task would run again): as long as a lease, which nobody can take meanwhile.
    claim = reconnecting(
        lambda: transitions.claim(task_id, worker=worker, lease_seconds=lease_seconds, using=db),
        db,
        patience=lease_seconds,
    )
    if claim is None:
        logger.info("batchtasks message dropped task=%s reason=not-queued", task_id)
        return
    facts = type_facts(claim.definition_id, claim.queue, db)
    outcome = run_plugin(claim, facts, RunnerContext(claim, worker, db))
    applied = reconnecting(
        lambda: transitions.finish(claim.task_id, claim.attempt, outcome, using=db),
        db,
        patience=lease_seconds,
    )
    if not applied:
        logger.warning(
            "batchtasks outcome not recorded task=%s attempt=%s reason=no-longer-running",
            claim.task_id,
            claim.attempt,
        )
    elif facts.retention == 0 and outcome.retry_at is None:  # delete on completion
        transitions.delete_tasks([claim.task_id], using=db)
    try:
        dispatch.refill(claim.queue, limited=facts.limited, using=db)
    except Exception:  # the worker's periodic pass will refill instead
        logger.exception("batchtasks refill failed queue=%s", claim.queue)


def run_plugin(
    claim: transitions.Claim, facts: TypeFacts, context: RunnerContext
) -> transitions.Outcome:
    """Call the plugin and turn whatever happens into an ``Outcome``."""
    plugin_cls: type[BatchTaskPlugin] | None = None
    try:
        plugin_cls = registry.get(facts.name).plugin
        result = plugin_cls(context).run(decode(claim.data, claim.codec))
        _check_result(facts.name, result)
    except TaskCancelled as exc:
        return transitions.Outcome(
            TaskState.CANCELLED, error_message=str(exc), progress=context.take_pending()
        )
    except Exception as exc:
        retry_on = plugin_cls.retry_on if plugin_cls is not None else ()
        again = retries.is_retryable(exc, retry_on) and not context.cancel_requested()
        return transitions.Outcome(
            TaskState.FAILED,
            error_type=error_type(exc),
            error_message=str(exc)[:MAX_MESSAGE],
            error_traceback="".join(traceback.format_exception(exc))[-MAX_TRACEBACK:],
            progress=context.take_pending(),
            retry_at=facts.retry_at(claim.attempt) if again else None,
        )
    pending = context.take_pending()
    return transitions.Outcome(
        TaskState.SUCCEEDED, result=result, progress=(100, pending[1] if pending else None)
    )


def error_type(exc: BaseException) -> str:
    """``module.Class`` of an exception (just ``Class`` for builtins)."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_result(type_name: str, result: object) -> None:
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ResultNotSerializable(
            f"Task type {type_name!r} returned {type(result).__name__}, which cannot be stored "
            f"as JSON ({exc}); return dicts, lists, strings, numbers, booleans or None."
        ) from exc


# --- what a worker process knows of a type, read again every few seconds ------------------
@dataclass(frozen=True)
class TypeFacts:
    """The definition values the runner needs, as the rows said a moment ago."""

    name: str
    limited: bool
    max_attempts: int
    retry_backoff: int
    retry_backoff_max: int
    retention: int | None

    def retry_at(self, attempt: int) -> datetime | None:
        return retries.retry_at(
            attempt, self.max_attempts, self.retry_backoff, self.retry_backoff_max
        )


FACTS_TTL = 5.0
_facts: dict[tuple[int, str], tuple[float, TypeFacts]] = {}


def type_facts(definition_id: int, queue: str, using: str) -> TypeFacts:
    """The facts of a type and its queue (cached ``FACTS_TTL`` seconds per process)."""
    key = (definition_id, queue)
    now = time.monotonic()
    cached = _facts.get(key)
    if cached is not None and now - cached[0] < FACTS_TTL:
        return cached[1]
    row = (
        BatchTaskDefinition.objects.using(using)
        .values_list(
            "name",
            "max_concurrency",
            "max_attempts",
            "retry_backoff",
            "retry_backoff_max",
            "retention",
        )
        .get(pk=definition_id)
    )
    queue_limit = (
        BatchQueue.objects.using(using)
        .filter(name=queue)
        .values_list("max_concurrency", flat=True)
        .first()
    )
    name, type_limit, max_attempts, backoff, backoff_max, retention = row
    limited = type_limit is not None or queue_limit is not None
    facts = TypeFacts(name, limited, max_attempts, backoff, backoff_max, retention)
    _facts[key] = (now, facts)
    return facts
