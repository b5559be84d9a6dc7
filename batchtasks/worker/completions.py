"""Successful finishes held for a moment and written together, and measured run times.

A pool process holds the successful outcomes of the tasks it runs and writes them in one
statement (``transitions.end_succeeded``) once ``COMPLETION_WINDOW`` seconds have passed
since the first was held, or ``COMPLETION_BATCH`` are held: across the tasks of a message
of several (then always before it takes its next message), and across messages of one
task each (``process_completions``: held on into the next messages). The window is kept
by the pool process's timer thread alone (the thread that runs the tasks writes only a
full batch, and a message of several at its end), so finishes are written on time even
while the next task runs long or no message comes (a cancel that kills that task then
takes none of them along), and the write is not on the path from one task to the next;
the process writes what it holds before it exits. What a crash can lose
is bounded by that window: the held tasks are still ``running`` under their lease, so
the heartbeat (at its second beat that misses them: ``worker.heartbeat``) or the sweeper
ends them as lost runs and they run again (at most ``COMPLETION_BATCH`` tasks run twice);
a kill of the process by its worker (a time limit, an ignored cancel) waits until they
are written (``running.set_held``).
Failures, cancels and retries are written at once, as a single run's are; so are the
finishes of limited types and queues (their slot is refilled at once, and must be free
by then). The app's signals and finalizers of a finish follow in the process's main
thread, at the next hold or the message's end; or, when the timer thread writes while the
process has no message in hand, in that thread at once (holding ``state_lock``: a
message that comes meanwhile waits for them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .. import transitions
from ..core.conf import get_settings
from ..db.connections import reconnecting
from ..services import depends, events, finalize
from ..services.facts import TypeFacts
from . import running
from .progress import COMPLETIONS, state_lock, timer_for

logger = logging.getLogger(__name__)


class Completions:
    """The successful finishes a pool process holds (see the module text)."""

    def __init__(self, db: str) -> None:
        conf = get_settings()
        self.db = db
        self.window = conf.COMPLETION_WINDOW
        self.limit = conf.COMPLETION_BATCH
        #: Whether finishes may stay held from one message into the next: only while the
        #: window is shorter than a beat (a beat misses a held finish at most once).
        self.across = 0 < self.window < conf.HEARTBEAT_SECONDS
        self._held: list[tuple[transitions.Succeeded, TypeFacts]] = []
        #: Written by the timer thread; their signals and finalizers are still to come.
        self._written: list[tuple[transitions.Succeeded, TypeFacts, transitions.Ended | None]]
        self._written = []
        #: Messages this process runs now (the timer follows up at once when none).
        self._messages = 0

    @property
    def enabled(self) -> bool:
        return self.window > 0

    @contextmanager
    def message(self) -> Iterator[None]:
        """Around a message of one task: finishes stay held past its end; what the timer
        wrote meanwhile is followed up at its end."""
        with state_lock:
            self._messages += 1
        try:
            yield
        finally:
            with state_lock:
                self._messages -= 1
            self.follow_up()

    def hold(self, run: transitions.Succeeded, facts: TypeFacts) -> None:
        with state_lock:
            if not self._held:
                timer_for(self.db).schedule(COMPLETIONS, self.window, self._write_due)
            self._held.append((run, facts))
            running.set_held(len(self._held))  # a kill of this process waits for them
            full = len(self._held) >= self.limit
        # Past the window too, the write is the timer thread's: it runs while this thread
        # waits (for its next message, a claim), not between a task and the next. Written
        # here, it was a round trip on that path for two fifths of the writes (py-spy,
        # one task per message, a loaded machine: the timer thread got no core in time).
        if full:
            self.flush()
        elif self._written:
            self.follow_up()

    def flush(self) -> None:
        """Write what is held; then the app's signals and finalizers of each written."""
        with state_lock:
            if not self._held and not self._written:
                return
            if self._held:
                timer_for(self.db).schedule(COMPLETIONS, None, None)
            self._write()
        self.follow_up()

    def follow_up(self) -> None:
        """The app's signals and finalizers of the finishes written (by the timer).

        Holding ``state_lock`` throughout: the finalizers' claims and records, the
        children made due and the deletes go through the state connection, which the
        timer thread shares; without the lock its writes of held finishes met these
        statements in one transaction (found by the soak, ``make soak``)."""
        with state_lock:
            written, self._written = self._written, []
            if not written:
                return
            gone = [
                run.fence.task_id
                for run, facts, ended in written
                if after_end(run.fence, ended, facts, self.db)
            ]
            if gone:
                transitions.delete_tasks(gone, using=self.db)

    def _write_due(self) -> None:
        """The window is up (timer thread): write what is held now; with no message in
        hand, follow them up here too (nothing else would until the next message)."""
        try:
            with state_lock:
                self._write()
                if not self._messages:
                    self.follow_up()
        except Exception:  # tried again at the next window, or the main thread's flush
            logger.exception("batchtasks held finishes not written yet")
            with state_lock:
                if self._held:
                    timer_for(self.db).schedule(COMPLETIONS, self.window, self._write_due)

    def _write(self) -> None:
        """Write the held finishes (``state_lock`` held); they stay held if that fails."""
        if not self._held:
            return
        runs = [run for run, _ in self._held]
        ended = reconnecting(
            lambda: transitions.end_succeeded(runs, using=self.db),
            self.db,
            patience=get_settings().LEASE_SECONDS,
        )
        self._written += [(r, f, ended.get(r.fence.task_id)) for r, f in self._held]
        self._held = []
        running.set_held(0)


#: The finishes each state connection's pool process holds across single-task messages.
_process: dict[str, Completions] = {}


def process_completions(db: str) -> Completions:
    """This process's held finishes for state connection ``db``."""
    held = _process.get(db)
    if held is None:
        held = _process[db] = Completions(db)
    return held


def flush_process() -> None:
    """Write and follow up everything this process holds (before it exits)."""
    for held in list(_process.values()):
        try:
            held.flush()
        except Exception:  # they stay running: lost runs, run again
            logger.exception("batchtasks held finishes not written at exit")


def after_end(
    fence: transitions.Fence, ended: transitions.Ended | None, facts: TypeFacts, db: str
) -> bool:
    """What follows a written outcome: the app's signal and the finalizers of a final
    task. Returns whether the task is to be deleted now (its type keeps nothing)."""
    if ended is not None and not ended.runs_again:
        events.finished(fence.task_id, facts.name, using=db)
    if ended is not None:
        depends.act_on(ended.settled, db)  # children made due, or skipped
    finalize.run_after_end(facts.name, ended, fence.task_id, using=db)
    if ended is None:
        logger.warning(
            "batchtasks outcome not recorded task=%s attempt=%s reason=no-longer-ours",
            fence.task_id,
            fence.attempt,
        )
        return False
    return facts.retention == 0 and not ended.runs_again  # delete on completion


#: Least seconds between two writes of a type's measured run time by one process.
RUN_TIME_INTERVAL = 2.0
_run_times: dict[int, list[float]] = {}
_written: dict[int, float] = {}


def measured(definition_id: int, seconds: float, *, db: str) -> None:
    """Note one run's time; every ``RUN_TIME_INTERVAL`` (and at a type's first run in
    this process) the mean goes into the type's moving average, which sizes its messages."""
    total = _run_times.setdefault(definition_id, [0.0, 0])
    total[0] += seconds
    total[1] += 1
    now = time.monotonic()
    if now - _written.get(definition_id, float("-inf")) < RUN_TIME_INTERVAL:
        return
    mean = total[0] / total[1]
    _run_times.pop(definition_id)
    _written[definition_id] = now
    try:
        with state_lock:
            transitions.record_run_seconds(definition_id, mean, using=db)
    except Exception:  # only sizing depends on it: never the run's outcome
        logger.warning("batchtasks run time not recorded definition=%s", definition_id)
