"""Run a message of several tasks of one type: claim them in one statement, run them one
after another in this pool process, and write their successes in batches.

Each task keeps its own fence, progress, cancel, inactivity watchdog, retries and
lost-run rules: only the claim and the successful finishes are shared. A task whose
cancel was asked for while it waited behind the others ends cancelled without ever
starting: before each start the flags of the rest are read again whenever the worker
heard of a cancel for it since the last read (``worker.notices``; always, where notices
cannot be heard), and at least every ``PROGRESS_INTERVAL``. A crash loses the held
finishes (``worker.completions``) and the tasks not run yet: all are ``running`` under
the lease, and run again as lost runs; a process killed for one of its tasks gives the
tasks behind it back instead (``worker.stopping``). A run stopped because its worker
could not renew its lease writes nothing, and the runs behind it do not start; nor does
any run once the lease of the message is about to run out unrenewed (``worker.fencing``):
all of them are the database's to end as lost runs.
"""

from __future__ import annotations

import logging
import time

from django.db import router

from .. import transitions
from ..core.conf import get_settings
from ..core.logcontext import log_context
from ..core.states import AttemptOutcome
from ..db.connections import reconnecting, state_db
from ..models import BatchTask
from ..services import events, leases
from ..services.facts import type_facts
from . import fencing, identity, notices, refills, running, stopping
from .completions import measured, process_completions
from .progress import state_lock
from .runner import RunnerContext, claim_runs, run_plugin, write_outcome

logger = logging.getLogger(__name__)

#: The attempt's outcome when its cancel came while it waited in its message.
CANCELLED_WAITING = "cancelled while waiting behind other tasks of its message"


def execute_many(
    runs: list[tuple[int, int]], *, worker: str, using: str | None = None
) -> list[tuple[transitions.Fence, transitions.Outcome]]:
    """Claim and run the ``(task id, attempt)`` runs of one message, in order; returns
    the outcome of each that ran (those not queued as their attempt run nothing)."""
    db = state_db(using or router.db_for_write(BatchTask))
    instance = identity.instance()
    fences = [transitions.Fence(task_id, attempt, instance) for task_id, attempt in runs]
    heard = notices.seen()  # before the claim: a cancel after it is news
    claims = claim_runs(fences, worker, db)
    if len(claims) < len(fences):
        logger.info(
            "batchtasks message dropped %d of %d runs reason=not-queued",
            len(fences) - len(claims),
            len(fences),
        )
    running.set_message([(c.task_id, c.attempt) for c in claims])  # if it dies: given back
    message = MessageRun(claims, worker, instance, db, heard)
    try:
        with message.completions.message():
            for i in range(len(claims)):
                if not message.run(i):
                    break
    finally:
        message.completions.flush()
    if message.fenced:  # the database is out of reach: the agent's passes refill later
        return message.outcomes
    for queue, limited in message.queues.items():
        try:
            refills.refill(queue, limited=limited, using=db)
        except Exception:  # the worker's periodic pass will refill instead
            logger.exception("batchtasks refill failed queue=%s", queue)
    return message.outcomes


class MessageRun:
    """The claimed runs of one message, run one after another."""

    def __init__(
        self,
        claims: list[transitions.Claim],
        worker: str,
        instance: str,
        db: str,
        heard: int | None,
    ) -> None:
        self.claims, self.worker, self.instance, self.db = claims, worker, instance, db
        self.completions = process_completions(db)
        self.outcomes: list[tuple[transitions.Fence, transitions.Outcome]] = []
        #: The queues of the runs, and whether each is limited (refilled at once).
        self.queues: dict[str, bool] = {}
        self.claimed = self.checked = time.monotonic()
        #: The notices heard at the last read of the flags (``None``: not to be trusted).
        self.heard = heard
        #: Cancel flags of the runs still to come, by task id, once read.
        self.flags: dict[int, bool] | None = None
        #: Whether the runs stopped because the message's leases could not be renewed.
        self.fenced = False

    def run(self, i: int) -> bool:
        """Run ``i`` (or drop it if cancelled); False once the rest must not start."""
        claim = self.claims[i]
        if not fencing.may_start():
            logger.warning(
                "batchtasks not starting task=%s attempt=%s and %d behind it: the lease of "
                "their message could not be renewed in time",
                claim.task_id,
                claim.attempt,
                len(self.claims) - i - 1,
            )
            self.fenced = True
            return False
        fence = transitions.Fence(claim.task_id, claim.attempt, self.instance)
        facts = type_facts(claim.definition_id, claim.queue, self.db)
        self.queues[claim.queue] = self.queues.get(claim.queue, False) or facts.limited
        if self._news(i):
            self.checked, self.heard = time.monotonic(), notices.seen()
            rest = [transitions.Fence(c.task_id, c.attempt, self.instance) for c in self.claims[i:]]
            self.flags = _cancel_flags(rest, self.db)
        if self.flags is not None:
            flag = self.flags.get(claim.task_id)
            if flag is None:  # no longer ours (its lease went): nothing to write
                return True
            if flag:  # cancelled while it waited
                cancelled = transitions.Outcome(
                    AttemptOutcome.CANCELLED, error_message=CANCELLED_WAITING
                )
                write_outcome(fence, cancelled, facts, self.db)
                self.outcomes.append((fence, cancelled))
                return True
        with log_context(claim.task_id, facts.name, claim.attempt):
            events.started(claim.task_id, facts.name, claim.attempt, using=self.db)
            started = time.monotonic()
            context = RunnerContext(claim, fence, self.worker).bind(self.db)
            outcome = run_plugin(claim, facts, context)
            if stopping.take_fenced():  # its lease is about to run out: nothing is written
                self.fenced = True
                return False
            measured(claim.definition_id, time.monotonic() - started, db=self.db)
            if outcome.kind == AttemptOutcome.SUCCEEDED and self.completions.enabled:
                note = outcome.progress[1] if outcome.progress else None
                waited = started - self.claimed
                self.completions.hold(
                    transitions.Succeeded(fence, outcome.result, note, waited), facts
                )
            else:
                write_outcome(fence, outcome, facts, self.db)
        self.outcomes.append((fence, outcome))
        return True

    def _news(self, i: int) -> bool:
        """Whether the flags must be read again before run ``i`` starts."""
        if time.monotonic() - self.checked >= get_settings().PROGRESS_INTERVAL:
            return True
        heard = notices.seen()
        # Untrusted: read before each start but the first (its claim has just been made).
        return heard != self.heard if heard is not None else i > 0


def _cancel_flags(fences: list[transitions.Fence], db: str) -> dict[int, bool]:
    """The cancel flags of the runs still to come, read once ``PROGRESS_INTERVAL`` has
    passed since the claim or the last read; a run missing is no longer ours."""
    with state_lock:
        return reconnecting(lambda: leases.cancel_flags(fences, using=db), db)
