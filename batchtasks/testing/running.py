"""``run_tasks()``: run submitted batch tasks in the test's process, as a worker would.

Every path to the broker ends in ``transport.publish.publish``; while a ``TaskRunner``
is active it receives those runs instead, and runs each through ``worker.runner.execute``
(claim, attempt row, plugin, outcome, retry or final state, finalizers, refill). Runs
published while one executes (a refill, a retry that is due at once) are queued and
run by the outermost call, one after another: nothing recurses.

A test wrapped in a transaction (pytest-django's ``django_db``, Django's ``TestCase``)
never commits, so nothing is published after a submit there. ``run_due()`` does what
the commit would have started: a dispatch pass for every queue with waiting tasks (in
the test's transaction, limits honoured) and a run of every queued task, until nothing
more is due. Tasks whose ``run_after`` or retry backoff lies ahead stay ``new``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections import deque
from collections.abc import Iterator

from django.db import connections, router

from ..core.exceptions import BatchTasksError
from ..core.states import TaskState
from ..models import BatchTask
from ..services import dispatch
from ..transport.publish import Run, redirected
from ..worker import runner
from .submitted import Submitted, TaskList

#: The worker name written on the attempts the helpers run.
WORKER = "batchtasks.testing"
#: Most attempts run in one go: a task that keeps submitting itself would never end.
MAX_RUNS = 1000


class TaskRunner(TaskList):
    """Runs batch tasks in this process (see the module text); ``tasks`` are those
    submitted since it was made."""

    def __init__(
        self, *, using: str | None = None, worker: str = WORKER, max_runs: int = MAX_RUNS
    ) -> None:
        self.using = using or router.db_for_write(BatchTask)
        self.worker = worker
        self.max_runs = max_runs
        self._submitted = Submitted(self.using)
        self._pending: deque[Run] = deque()
        #: Attempts already handed to the runner: none runs twice.
        self._tried: set[tuple[int, int]] = set()
        self._ran: list[int] = []
        self._running = False
        #: An error of a run started by a commit: the commit's caller only logs it.
        self._failure: Exception | None = None

    @property
    def tasks(self) -> list[BatchTask]:
        """The tasks submitted since this runner was made, as their rows are now."""
        return self._submitted.tasks()

    def receive(self, queue: str, runs: list[Run]) -> None:
        """``publish``'s receiver: run them now, or after the run in progress."""
        self._pending.extend(runs)
        if not self._running:
            try:
                self._run_all()
            except Exception as exc:
                self._failure = exc
                raise

    def run_due(self) -> list[BatchTask]:
        """Dispatch every queue with waiting tasks and run whatever is due, until nothing
        is; return the tasks that ran an attempt, as their rows are now."""
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        first = len(self._ran)
        self._run_all()
        ran = list(dict.fromkeys(self._ran[first:]))
        rows = BatchTask.objects.using(self.using).in_bulk(ran)
        return [rows[pk] for pk in ran if pk in rows]

    def _run_all(self) -> None:
        self._running = True
        count = 0
        try:
            with _sigterm_kept():
                while self._pending or self._admit_due():
                    count += 1
                    if count > self.max_runs:
                        raise BatchTasksError(
                            f"run_tasks ran {self.max_runs} attempts in one go and more are "
                            "due: does a task keep submitting itself? Pass max_runs= to allow more."
                        )
                    self._execute(self._pending.popleft())
        finally:
            self._running = False

    def _execute(self, run: Run) -> None:
        key = (run.task_id, run.attempt)
        if key in self._tried:
            return
        self._tried.add(key)
        # In a transaction that never commits a refill would only wait for that commit;
        # the next ``_admit_due`` does its work.
        committed = not connections[self.using].in_atomic_block
        ended = runner.execute(
            run.task_id,
            run.attempt,
            worker=self.worker,
            using=self.using,
            in_process=True,
            refill=committed,
        )
        if ended is not None:
            self._ran.append(run.task_id)

    def _admit_due(self) -> bool:
        """A dispatch pass for each queue with waiting tasks, then every queued attempt
        not yet run; whether anything is pending now."""
        db = self.using
        tasks = BatchTask.objects.using(db)
        waiting = tasks.filter(state=TaskState.NEW).values_list("definition__queue", flat=True)
        for queue in sorted(set(waiting)):
            # Not deferred to a commit that a test's transaction never makes.
            dispatch.dispatch_queue(queue, using=db, defer_in_transaction=False)
        # Queued, but their publish waits for a commit (or was captured): run them too.
        queued = tasks.filter(state=TaskState.QUEUED).values_list("pk", "attempt")
        known = self._tried | {(run.task_id, run.attempt) for run in self._pending}
        for task_id, attempt in queued.order_by("pk"):
            if (task_id, attempt) not in known:
                self._pending.append(Run(task_id, attempt))
        return bool(self._pending)


@contextlib.contextmanager
def _sigterm_kept() -> Iterator[None]:
    """Put back this process's SIGTERM handler: the runner installs its own for each
    plugin run (a worker's stop requests) and leaves it in place."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if saved is not None:
            signal.signal(signal.SIGTERM, saved)


@contextlib.contextmanager
def run_tasks(
    *, using: str | None = None, worker: str = WORKER, run_on_exit: bool = True
) -> Iterator[TaskRunner]:
    """Run the batch tasks submitted inside the block in this process: at commit, and
    (``run_on_exit``) whatever is due when the block ends without an error."""
    task_runner = TaskRunner(using=using, worker=worker)
    with redirected(task_runner.receive):
        yield task_runner
        if run_on_exit:
            task_runner.run_due()
