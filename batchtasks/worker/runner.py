"""Run one attempt: claim it, call its plugin, write its outcome, refill its slot.

Runs in a pool process. Every write is fenced by (task, attempt, worker instance), so
a message for another attempt runs nothing and a run that lost its lease writes
nothing more. A success of an unlimited type may be held to be written with the next
ones (``worker.completions``); its slot's refill is left to the worker's agent
(``worker.refills``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import traceback

from billiard.exceptions import TimeLimitExceeded
from django.db import DatabaseError, router

from .. import transitions
from ..core.codecs import decode
from ..core.conf import get_settings
from ..core.exceptions import (
    ConfigurationError,
    InactivityTimeout,
    IsolatedRunFailed,
    TaskCancelled,
    TaskStopped,
)
from ..core.logcontext import log_context
from ..core.plugin import BatchTaskPlugin, ExecutorPlugin
from ..core.registry import registry
from ..core.retries import is_retryable, retry_delay
from ..core.states import AttemptOutcome, Isolation, TaskState
from ..db.connections import reconnecting, state_db, unreachable
from ..models import BatchTask
from ..services import events, leases
from ..services.facts import TypeFacts, type_facts
from . import fencing, identity, refills, running, stopping
from .completions import after_end, measured, process_completions
from .isolation import executor, process
from .isolation.results import MAX_MESSAGE, MAX_TRACEBACK, check_result, error_type
from .progress import ProgressWriter, state_lock

logger = logging.getLogger(__name__)


class RunnerContext:
    """The plugin's view of its run: throttled progress writes and cancel checks."""

    def __init__(self, claim: transitions.Claim, fence: transitions.Fence, worker: str) -> None:
        self.task_id: int | None = claim.task_id
        self.attempt = claim.attempt
        self.worker = worker
        self.fence = fence
        self.using = ""
        self.progress: ProgressWriter | None = None
        self._last_check = time.monotonic()

    def bind(self, using: str) -> RunnerContext:
        self.using = using
        self.progress = ProgressWriter(self.fence, using, get_settings().PROGRESS_INTERVAL)
        return self

    def report_progress(self, percent: int, message: str) -> None:
        assert self.progress is not None
        self.progress.report(percent, message)
        stopping.touch_activity()
        self._last_check = time.monotonic()

    def cancel_requested(self) -> bool:
        """True once a cancel was asked for, or the attempt is no longer this worker's."""
        assert self.progress is not None
        progress = self.progress
        if progress.cancel:
            return True
        if time.monotonic() - self._last_check >= progress.interval:
            self._last_check = time.monotonic()
            fence, using = self.fence, self.using
            try:
                with state_lock:
                    flag = reconnecting(lambda: leases.still_ours(fence, using=using), using)
            except DatabaseError:
                logger.warning("batchtasks cancel check failed task=%s", fence.task_id)
                return False
            progress.cancel = flag is None or flag
        return progress.cancel

    def load_task(self) -> BatchTask:
        tasks = BatchTask.objects.select_related("definition").with_owner()
        return tasks.get(pk=self.fence.task_id)

    def take_pending(self) -> tuple[int, str] | None:
        return None if self.progress is None else self.progress.take_pending()


def execute(
    task_id: int,
    attempt: int,
    *,
    worker: str,
    using: str | None = None,
    in_process: bool = False,
    refill: bool = True,
    hold: bool = False,
) -> transitions.Ended | None:
    """Claim attempt ``attempt`` of task ``task_id`` and run it to an outcome. A message
    for a task that is not queued as that attempt (a duplicate, a stale message of an
    earlier attempt, a cancelled task) runs nothing.

    For the test helpers (``batchtasks.testing``): ``in_process`` runs a type with
    ``isolation="process"`` in this process (a child would not see the test's
    transaction); ``refill=False`` leaves the freed slot to the caller's next pass."""
    db = state_db(using or router.db_for_write(BatchTask))
    fence = transitions.Fence(task_id, attempt, identity.instance())
    claims = claim_runs([fence], worker, db)
    claim = claims[0] if claims else None
    if claim is None:
        logger.info(
            "batchtasks message dropped task=%s attempt=%s reason=not-queued", task_id, attempt
        )
        return None
    if not fencing.may_start():  # the claim's answer came too late (``fencing``)
        logger.warning(
            "batchtasks not starting task=%s attempt=%s: its lease could not be renewed in time",
            task_id,
            attempt,
        )
        return None
    facts = type_facts(claim.definition_id, claim.queue, db)
    if in_process and facts.isolation == Isolation.PROCESS:
        facts = dataclasses.replace(facts, isolation=Isolation.INLINE)
    with log_context(task_id, facts.name, attempt):  # every record of the run names it
        events.started(task_id, facts.name, attempt, using=db)
        started = time.monotonic()
        outcome = run_plugin(claim, facts, RunnerContext(claim, fence, worker).bind(db))
        if stopping.take_fenced():  # its lease is about to run out: nothing is written
            return None
        measured(claim.definition_id, time.monotonic() - started, db=db)
        held = process_completions(db) if hold and not facts.limited else None
        ended: transitions.Ended | None
        if held is not None and held.across and outcome.kind == AttemptOutcome.SUCCEEDED:
            note = outcome.progress[1] if outcome.progress else None
            held.hold(transitions.Succeeded(fence, outcome.result, note), facts)
            ended = transitions.Ended(TaskState.SUCCEEDED, claim.queue)
        else:
            ended = write_outcome(fence, outcome, facts, db)
    if refill:
        try:
            refills.refill(claim.queue, limited=facts.limited, using=db)
        except Exception:  # the worker's periodic pass will refill instead
            logger.exception("batchtasks refill failed queue=%s", claim.queue)
    return ended


class ClaimUnanswered(Exception):
    """The database stayed out of reach for a lease while a message's claim waited for
    it: nothing of the message ran; its run task gives it back to the broker."""


def claim_runs(fences: list[transitions.Fence], worker: str, db: str) -> list[transitions.Claim]:
    """Claim the attempts of one message (one statement), those still queued as theirs;
    ``ClaimUnanswered`` if the database stays out of reach for a lease meanwhile."""
    # While PostgreSQL is away, wait for it rather than drop the message or the outcome
    # (then the task would run again): as long as a lease, which nobody can take meanwhile.
    lease_seconds = get_settings().LEASE_SECONDS

    def claim() -> list[transitions.Claim]:
        running.note_claim(time.monotonic())  # the leases last from here at least (fencing)
        return transitions.claim_many(
            fences, worker=worker, pid=os.getpid(), lease_seconds=lease_seconds, using=db
        )

    with state_lock:
        try:
            return reconnecting(claim, db, patience=lease_seconds)
        except DatabaseError as error:
            if unreachable(error):
                raise ClaimUnanswered(str(error)) from error
            raise


def write_outcome(
    fence: transitions.Fence, outcome: transitions.Outcome, facts: TypeFacts, db: str
) -> transitions.Ended | None:
    """Write the outcome, then tell the app and run the finalizers if the task is final."""
    with state_lock:  # and what follows too: the timer thread shares the connection
        ended = reconnecting(
            lambda: transitions.end_attempt(fence, outcome, using=db),
            db,
            patience=get_settings().LEASE_SECONDS,
        )
        if after_end(fence, ended, facts, db):
            transitions.delete_tasks([fence.task_id], using=db)
    return ended


def run_plugin(
    claim: transitions.Claim, facts: TypeFacts, context: RunnerContext
) -> transitions.Outcome:
    """Call the plugin and turn whatever happens into an ``Outcome``."""
    plugin_cls: type[BatchTaskPlugin] | None = None
    # Only inline runs are watched by the agent; isolated ones by their supervisor.
    inline = facts.isolation == Isolation.INLINE
    try:
        plugin_cls = registry.get(facts.name).plugin
        with stopping.plugin_running(
            context.fence,
            inactivity_timeout=facts.inactivity_timeout if inline else None,
            soft_timeout=facts.soft_timeout if inline else None,
            timeout=facts.timeout if inline else None,
        ):
            result = _call(plugin_cls, claim, facts, context)
        check_result(facts.name, result)
    except TaskCancelled as exc:
        return transitions.Outcome(
            AttemptOutcome.CANCELLED,
            error_type=leases.STOPPED if isinstance(exc, TaskStopped) else "",
            error_message=str(exc),
            progress=context.take_pending(),
        )
    except Exception as exc:
        return _failed(exc, claim, facts, context, plugin_cls)
    except SystemExit as exc:
        if type(exc) is not SystemExit:  # Celery's WorkerShutdown/WorkerTerminate: let go
            raise
        # sys.exit() in a plugin fails its task (as Django's backends do) instead of
        # killing the pool process (lost, run again, failed at last: WorkerLostError).
        return _failed(exc, claim, facts, context, plugin_cls)
    pending = context.take_pending()
    return transitions.Outcome(
        AttemptOutcome.SUCCEEDED, result=result, progress=(100, pending[1] if pending else None)
    )


def _call(
    plugin_cls: type[BatchTaskPlugin],
    claim: transitions.Claim,
    facts: TypeFacts,
    context: RunnerContext,
) -> object:
    """Run the plugin where its type's isolation says (``worker.isolation``)."""
    if facts.isolation == Isolation.PROCESS:
        return process.run(claim, facts, context)
    if facts.isolation == Isolation.EXECUTOR:
        if not issubclass(plugin_cls, ExecutorPlugin):
            raise ConfigurationError(
                f"Task type {facts.name!r} has isolation='executor' in its definition, but "
                f"{plugin_cls.__qualname__} is not an ExecutorPlugin; change its isolation."
            )
        return executor.run(plugin_cls, claim, facts, context)
    return plugin_cls(context).run(decode(claim.data, claim.codec))


def _failed(
    exc: BaseException,
    claim: transitions.Claim,
    facts: TypeFacts,
    context: RunnerContext,
    plugin_cls: type[BatchTaskPlugin] | None,
) -> transitions.Outcome:
    """The outcome of a failed attempt; an isolated run's error is the child's."""
    retry_on = plugin_cls.retry_on if plugin_cls is not None else ()
    failures = claim.attempt - claim.lost_runs
    kind, details = error_type(exc), "".join(traceback.format_exception(exc))
    retry = is_retryable(exc, retry_on)
    message = str(exc)
    if isinstance(exc, TimeLimitExceeded):  # as when Celery's hard limit killed the run
        retry, message = True, str(exc.args[0]) if exc.args else message
    elif isinstance(exc, InactivityTimeout):
        kind = exc.error_type
    elif isinstance(exc, IsolatedRunFailed):
        kind, details = exc.error_type, exc.details
        retry = retry if exc.retryable is None else exc.retryable
    return transitions.Outcome(
        AttemptOutcome.FAILED,
        error_type=kind,
        error_message=message[:MAX_MESSAGE],
        error_traceback=details[-MAX_TRACEBACK:],
        progress=context.take_pending(),
        retry=retry,
        retry_delay=retry_delay(failures, facts.retry_backoff, facts.retry_backoff_max),
    )
