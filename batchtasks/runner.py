"""Run one claimed task: call its plugin, throttle its progress, write its outcome."""

from __future__ import annotations

import json
import logging
import time
import traceback

from django.db import DatabaseError, router

from . import dispatch, transitions
from .codecs import decode
from .conf import get_settings
from .db import reconnecting, state_db
from .exceptions import ResultNotSerializable, TaskCancelled
from .models import BatchQueue, BatchTask, BatchTaskDefinition
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
                    lambda: transitions.cancel_requested(task_id, using=self.using), self.using
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
    lease = get_settings().LEASE_SECONDS
    claim = reconnecting(
        lambda: transitions.claim(task_id, worker=worker, lease_seconds=lease, using=db), db
    )
    if claim is None:
        logger.info("batchtasks message dropped task=%s reason=not-queued", task_id)
        return
    context = RunnerContext(claim, worker, db)
    outcome = run_plugin(claim, context)
    applied = reconnecting(
        lambda: transitions.finish(claim.task_id, claim.attempt, outcome, using=db), db
    )
    if not applied:
        logger.warning(
            "batchtasks outcome not recorded task=%s attempt=%s reason=no-longer-running",
            claim.task_id,
            claim.attempt,
        )
    try:
        dispatch.refill(claim.queue, limited=_is_limited(claim, db), using=db)
    except Exception:  # the worker's periodic pass will refill instead
        logger.exception("batchtasks refill failed queue=%s", claim.queue)


def run_plugin(claim: transitions.Claim, context: RunnerContext) -> transitions.Outcome:
    """Call the plugin and turn whatever happens into an ``Outcome``."""
    try:
        spec = registry.get(_type_name(claim.definition_id, context.using))
        plugin = spec.plugin(context)
        result = plugin.run(decode(claim.data, claim.codec))
        _check_result(spec.name, result)
    except TaskCancelled as exc:
        return transitions.Outcome(
            TaskState.CANCELLED, error_message=str(exc), progress=context.take_pending()
        )
    except Exception as exc:
        return transitions.Outcome(
            TaskState.FAILED,
            error_type=error_type(exc),
            error_message=str(exc)[:MAX_MESSAGE],
            error_traceback="".join(traceback.format_exception(exc))[-MAX_TRACEBACK:],
            progress=context.take_pending(),
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


# --- per-process caches of definition facts ---------------------------------------------
_names: dict[int, str] = {}
_limits: dict[tuple[int, str], tuple[float, bool]] = {}
LIMITS_TTL = 5.0


def _type_name(definition_id: int, using: str) -> str:
    """A definition's name (names never change, so it is cached for good)."""
    if definition_id not in _names:
        _names[definition_id] = (
            BatchTaskDefinition.objects.using(using)
            .values_list("name", flat=True)
            .get(pk=definition_id)
        )
    return _names[definition_id]


def _is_limited(claim: transitions.Claim, using: str) -> bool:
    """Whether the claim's type or queue has a concurrency limit (cached a few seconds)."""
    key = (claim.definition_id, claim.queue)
    now = time.monotonic()
    cached = _limits.get(key)
    if cached is not None and now - cached[0] < LIMITS_TTL:
        return cached[1]
    type_limit = (
        BatchTaskDefinition.objects.using(using)
        .filter(pk=claim.definition_id)
        .values_list("max_concurrency", flat=True)
        .first()
    )
    queue_limit = (
        BatchQueue.objects.using(using)
        .filter(name=claim.queue)
        .values_list("max_concurrency", flat=True)
        .first()
    )
    limited = type_limit is not None or queue_limit is not None
    _limits[key] = (now, limited)
    return limited
