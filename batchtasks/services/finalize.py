"""Run the finalizers of final tasks: the functions registered with ``@finalizer`` for
their type, then the type's webhook.

A task is marked due in the statement that makes it final (``transitions``). Its
worker runs them right after (``run_after_end``) and the sweeper runs whatever is due
(``run_due``): cancels and skips made elsewhere, runs whose process crashed (claimed
again once their lease is over), and failed runs, again after an exponential backoff
until ``FINALIZE_MAX_ATTEMPTS``. The side effects happen at least once; the outcome
is recorded exactly once, and a finalizer never changes the task's own outcome.

Each final outcome is finalized for itself: a run is fenced by the attempt that
reached it, and an outcome a retry replaced while its finalizers were pending is run
(and recorded) from the ``BatchTaskOutcome`` row the retry kept, with its own data.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from .. import transitions
from ..core.conf import get_settings
from ..core.exceptions import BatchTasksError, ConfigurationError
from ..core.finalizers import finalizers_of, has_finalizers, webhook_of
from ..core.states import STATE_CODES, FinalizeState
from ..db.connections import reconnecting
from ..models import BatchTask, BatchTaskOutcome

logger = logging.getLogger(__name__)

MAX_ERROR = 10_000
#: Most finalizations one sweep runs.
BATCH = 100
SIGNATURE_HEADER = "X-Batchtasks-Signature"


class WebhookFailed(BatchTasksError):
    """Raised when a webhook answers other than 2xx, or cannot be reached."""


def run_after_end(
    type_name: str, ended: transitions.Ended | None, task_id: int, *, using: str
) -> None:
    """Run the finalizers of a task its worker just ended, if that made it final and its
    type has any (no query otherwise); a failure leaves them to the sweeper."""
    if ended is None or ended.runs_again or not has_finalizers(type_name):
        return
    try:
        run(task_id, using=using)
    except Exception:  # its claim's lease runs out and the sweeper tries again
        logger.exception("batchtasks finalizers not run task=%s", task_id)


def run_due(*, using: str, limit: int = BATCH, budget: float | None = None) -> int:
    """Run the finalizers that are due (at most ``limit``; no new one after ``budget``
    seconds); return how many runs were recorded."""
    deadline = time.monotonic() + budget if budget is not None else None
    recorded = 0
    for task_id, attempt in transitions.due_finalizations(limit=limit, using=using):
        if deadline is not None and time.monotonic() > deadline:
            break
        recorded += run(task_id, attempt=attempt, using=using) is not None
    return recorded


def run(task_id: int, *, attempt: int | None = None, using: str) -> str | None:
    """Claim and run the due finalizers of one task's outcome (its current one, or the
    one of ``attempt`` a retry replaced); the finalize state recorded (``None``: not
    due, run by another process, or its run was taken over)."""
    conf = get_settings()
    claimed = transitions.claim_finalization(
        task_id, conf.FINALIZE_LEASE, attempt=attempt, using=using
    )
    if claimed is None:
        return None
    task = outcome_of(claimed, using=using)
    if task is None:  # deleted meanwhile
        return None
    try:
        call_finalizers(task)
    except Exception as exc:
        return _record_error(claimed, exc, using=using)
    if not _recording(lambda: transitions.record_finalized(claimed, using=using), using):
        return None
    return FinalizeState.DONE


def _recording(record: Callable[[], bool], using: str) -> bool:
    """Write a run's record, on a new connection if the one it ran on died meanwhile (a
    restart, a killed backend), for as long as the run's claim lasts: the side effects
    have happened, and a record never written means they happen again once the claim's
    lease is over. The record is fenced by the claim, so a late one changes nothing."""
    return reconnecting(record, using, patience=get_settings().FINALIZE_LEASE)


def outcome_of(claimed: transitions.FinalizeRun, *, using: str) -> BatchTask | None:
    """The task as it was at the outcome ``claimed`` is for, even if a retry has replaced
    that outcome since (then kept as a ``BatchTaskOutcome``)."""
    tasks = BatchTask.objects.using(using).select_related("definition").with_owner()
    task = tasks.filter(pk=claimed.task_id).first()
    if task is None or task.attempt == claimed.attempt:
        return task
    kept = BatchTaskOutcome.objects.using(using).filter(task_id=task.pk, attempt=claimed.attempt)
    outcome = kept.first()
    return None if outcome is None else outcome.as_task(task)


def call_finalizers(task: BatchTask) -> None:
    """Call the finalizers of the task's type in turn, then its webhook."""
    name = task.definition.name
    for function in finalizers_of(name):
        function(task)
    url = webhook_of(name)
    if url is not None:
        post_webhook(url, task)


def _record_error(claimed: transitions.FinalizeRun, exc: Exception, *, using: str) -> str | None:
    conf = get_settings()
    error = "".join(traceback.format_exception(exc))[-MAX_ERROR:]
    number, retry_in = claimed.number, None
    if number < conf.FINALIZE_MAX_ATTEMPTS:
        retry_in = min(conf.FINALIZE_BACKOFF * 2 ** (number - 1), conf.FINALIZE_BACKOFF_MAX)
    logger.warning(
        "batchtasks finalizer failed task=%s attempt=%s run=%s retry_in=%s error=%s",
        claimed.task_id,
        claimed.attempt,
        number,
        retry_in,
        f"{type(exc).__name__}: {exc}",
    )
    if not _recording(
        lambda: transitions.record_finalize_error(claimed, error, retry_in, using=using), using
    ):
        return None
    return FinalizeState.PENDING if retry_in is not None else FinalizeState.FAILED


def webhook_payload(task: BatchTask) -> dict[str, Any]:
    """What a webhook receives about a final task."""
    return {
        "id": task.pk,
        "type": task.definition.name,
        "state": task.state,
        "state_code": STATE_CODES[task.state],
        "result": task.result,
        "error_type": task.error_type,
        "error_message": task.error_message,
        "finished_at": task.finished_at.isoformat() if task.finished_at else None,
        "attempt": task.attempt,
    }


def signature(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the HMAC-SHA256 of the body in hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # urllib would repeat a redirected POST as a GET without its body: a redirect is
    # reported as the failure it is for a webhook instead.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def post_webhook(url: str, task: BatchTask) -> None:
    """POST the task's outcome as signed JSON; ``WebhookFailed`` unless answered 2xx."""
    conf = get_settings()
    if not conf.WEBHOOK_SECRET:
        raise ConfigurationError(
            f"Task type {task.definition.name!r} has a webhook but BATCHTASKS['WEBHOOK_SECRET'] "
            "is not set; set it (or BATCHTASKS_WEBHOOK_SECRET) to sign the requests."
        )
    body = json.dumps(webhook_payload(task), separators=(",", ":"), sort_keys=True).encode()
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "batchtasks",
            SIGNATURE_HEADER: signature(conf.WEBHOOK_SECRET, body),
        },
    )
    try:
        with _opener.open(request, timeout=conf.WEBHOOK_TIMEOUT) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        raise WebhookFailed(f"webhook {url!r} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise WebhookFailed(f"webhook {url!r} could not be reached: {exc}") from None
    if not 200 <= status < 300:
        raise WebhookFailed(f"webhook {url!r} answered {status}")
