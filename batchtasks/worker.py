"""The agent that lives in each Celery worker's main process, in a thread of its own.

It keeps working while the pool processes run plugin code, so leases are renewed and
cancels enforced whatever a plugin does. Every ``HEARTBEAT_SECONDS`` it renews the leases
of the attempts this worker holds, ends those the database says it runs but no pool
process holds any more (killed, or past the hard time limit), stops tasks that ignored
a cancel for ``CANCEL_GRACE`` seconds, and records itself in ``BatchWorker``. Every
``DISPATCH_INTERVAL`` (and the moment a delayed task falls due) it runs a safety-net
dispatch pass for its queues, and every ``SWEEP_INTERVAL`` it offers to sweep.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import psutil
from celery.worker import state as celery_state
from django.db import close_old_connections, connection, connections, router
from django.utils import timezone

from . import lease, sweeper, transitions
from .conf import get_settings
from .db import close_state_connections, state_db
from .definitions import sync_definitions
from .dispatch import dispatch_queue
from .models import BatchQueue, BatchTask
from .publish import RUN_TASK_NAME
from .sql import Tables, db_datetime, states_sql
from .states import TaskState

logger = logging.getLogger(__name__)


def parse_message_id(request_id: str) -> tuple[int, int] | None:
    """``(task id, attempt)`` from a run message's id (``batchtask-<id>-<attempt>``)."""
    prefix, _, rest = request_id.partition("-")
    task_id, _, attempt = rest.partition("-")
    if prefix != "batchtask" or not task_id.isdigit() or not attempt.isdigit():
        return None
    return int(task_id), int(attempt)


def requests_in_hand() -> dict[tuple[int, int], Any]:
    """The run requests this worker holds: received, waiting for or in a pool process."""
    for _ in range(5):  # the consumer's thread changes these sets under us now and then
        try:
            requests = [*celery_state.reserved_requests, *celery_state.active_requests]
            break
        except RuntimeError:
            continue
    else:
        requests = []
    held = {}
    for request in requests:
        if getattr(request, "name", None) == RUN_TASK_NAME:
            key = parse_message_id(getattr(request, "id", "") or "")
            if key is not None:
                held[key] = request
    return held


class WorkerAgent:
    """See the module text."""

    def __init__(
        self, *, hostname: str, queues: list[str], concurrency: int = 0, pool: Any = None
    ) -> None:
        self.hostname = hostname
        self.queues = queues
        self.concurrency = concurrency
        self.pool = pool
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="batchtasks-agent", daemon=True)
        self._next = {"beat": 0.0, "dispatch": 0.0, "sweep": 0.0}
        self._cancel_seen: dict[tuple[int, int], float] = {}
        self._processes: dict[int, psutil.Process] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def db(self) -> str:
        return state_db(router.db_for_write(BatchTask))

    def _loop(self) -> None:
        try:
            self._startup()
            while not self._stop.wait(self._sleep()):
                self.tick()
        finally:
            try:
                lease.worker_stopped(self.hostname, using=self.db)
            except Exception:
                logger.warning("batchtasks could not mark worker=%s stopped", self.hostname)
            connection.close()
            close_state_connections()

    def _startup(self) -> None:
        try:
            sync_definitions()
            lease.register_worker(
                self.hostname, queues=self.queues, concurrency=self.concurrency, using=self.db
            )
        except Exception:
            logger.exception("batchtasks could not register worker=%s", self.hostname)
        if not self._batch_queues():
            logger.warning(
                "batchtasks worker=%s consumes no batch queue (queues=%s); "
                "`manage.py batchtasks workers` prints the -Q options to use",
                self.hostname,
                ",".join(self.queues),
            )

    def _sleep(self) -> float:
        return max(0.01, min(self._next.values()) - time.monotonic())

    def tick(self) -> None:
        """Whatever duties are due now."""
        close_old_connections()
        settings = get_settings()
        duties = (
            ("beat", self.heartbeat, settings.HEARTBEAT_SECONDS),
            ("dispatch", self.dispatch, settings.DISPATCH_INTERVAL),
            ("sweep", self.sweep, settings.SWEEP_INTERVAL),
        )
        for name, duty, interval in duties:
            if time.monotonic() < self._next[name]:
                continue
            self._next[name] = time.monotonic() + interval
            try:
                duty()
            except Exception:
                logger.exception("batchtasks %s failed worker=%s", name, self.hostname)
                connections[self.db].close()  # a fresh connection next time

    # --- the heartbeat -----------------------------------------------------------------
    def heartbeat(self) -> None:
        """Renew leases, end lost attempts, enforce cancels, record this worker."""
        db = self.db
        # The database first, then what we hold: an attempt claimed in between is then
        # missing from `running`, never wrongly missing from `held`.
        running = lease.running_on(self.hostname, using=db)
        held = requests_in_hand()
        refill: set[str] = set()
        for attempt in running:
            if (attempt.task_id, attempt.attempt) not in held and self._lose(attempt):
                refill.add(attempt.queue)
        renewed = transitions.renew_leases(
            self.hostname, list(held), get_settings().LEASE_SECONDS, using=db
        )
        queues = {(a.task_id, a.attempt): a.queue for a in running}
        for task_id, attempt_number, cancel in renewed:
            key = (task_id, attempt_number)
            if cancel and self._stop_if_overdue(task_id, attempt_number, held, db):
                refill.add(queues.get(key, ""))
        self._cancel_seen = {k: v for k, v in self._cancel_seen.items() if k in held}
        refill.discard("")
        cpu, memory = self._usage()
        lease.worker_seen(self.hostname, in_hand=len(held), cpu=cpu, memory=memory, using=db)
        for queue in refill:
            dispatch_queue(queue, using=db)

    def _lose(self, held: lease.HeldAttempt) -> bool:
        if held.overran(timezone.now()):
            return lease.lose(held, lease.TIME_LIMIT, lease.time_limit_message(held), using=self.db)
        return lease.lose(held, lease.WORKER_LOST, lease.worker_lost_message(held), using=self.db)

    def _stop_if_overdue(
        self, task_id: int, attempt: int, held: dict[tuple[int, int], Any], db: str
    ) -> bool:
        """Stop a task that has not honoured a cancel within the grace period."""
        key = (task_id, attempt)
        grace = get_settings().CANCEL_GRACE
        first = self._cancel_seen.setdefault(key, time.monotonic())
        waited = time.monotonic() - first
        if waited < grace:
            return False
        request = held[key]
        # SIGTERM first; still there a beat later, SIGKILL.
        sig = (
            signal.SIGTERM if waited < grace + get_settings().HEARTBEAT_SECONDS else signal.SIGKILL
        )
        if self.pool is not None and getattr(request, "worker_pid", None):
            request.terminate(self.pool, signal=sig)
        outcome = transitions.Outcome(
            TaskState.CANCELLED,
            error_type="batchtasks.Stopped",
            error_message=f"cancelled; stopped after ignoring the cancel for {grace:g} s",
        )
        stopped = transitions.finish(task_id, attempt, outcome, using=db)
        if stopped:
            logger.warning("batchtasks stopped task=%s attempt=%s after cancel", task_id, attempt)
        return stopped

    def _usage(self) -> tuple[float | None, int | None]:
        """CPU % and resident memory of this worker and its pool processes."""
        try:
            main = self._processes.setdefault(os.getpid(), psutil.Process())
            family = [main, *main.children(recursive=True)]
            cpu = memory = 0.0
            for process in family:
                process = self._processes.setdefault(process.pid, process)
                cpu += process.cpu_percent(None)
                memory += process.memory_info().rss
            alive = {p.pid for p in family}
            self._processes = {pid: p for pid, p in self._processes.items() if pid in alive}
            return round(cpu, 1), int(memory)
        except psutil.Error:
            return None, None

    # --- dispatch and sweep ----------------------------------------------------------------
    def _batch_queues(self) -> list[str]:
        known = BatchQueue.objects.using(self.db).filter(name__in=self.queues)
        names = set(known.values_list("name", flat=True))
        return [queue for queue in self.queues if queue in names]

    def dispatch(self) -> None:
        """A safety-net pass for each batch queue; wake again when a delayed task is due."""
        queues = self._batch_queues()
        for queue in queues:
            dispatch_queue(queue, using=self.db)
        due = self._next_due(queues)
        if due is not None:
            wait = (due - timezone.now()).total_seconds()
            self._next["dispatch"] = min(self._next["dispatch"], time.monotonic() + wait + 0.005)

    def _next_due(self, queues: list[str]) -> Any:
        if not queues:
            return None
        db_connection = connections[self.db]
        t = Tables(db_connection)
        marks = ", ".join(["%s"] * len(queues))
        sql = (
            f"SELECT MIN(t.run_after) FROM {t.task} t JOIN {t.definition} d "
            f"ON d.id = t.definition_id WHERE t.state = {states_sql(TaskState.NEW)} "
            f"AND t.run_after > %s AND d.queue IN ({marks})"
        )
        now = db_datetime(db_connection, timezone.now())
        with db_connection.cursor() as cursor:
            cursor.execute(sql, [now, *queues])
            value = cursor.fetchone()[0]
        if isinstance(value, str):  # SQLite returns text
            from django.utils.dateparse import parse_datetime

            value = parse_datetime(value)
            if value is not None and timezone.is_naive(value):
                value = timezone.make_aware(value, timezone.get_fixed_timezone(0))
        return value

    def sweep(self) -> None:
        """Sweep the cluster, unless another worker is at it."""
        sweeper.sweep(using=self.db)
