"""The agent that lives in each Celery worker's main process, in a thread of its own.

It keeps working while the pool processes run plugin code, so leases are renewed and
cancels enforced whatever a plugin does. It only schedules; each duty lives in its
own module. Two threads share them, so that what must happen on this host in time never
waits on the database. The local thread touches no database: while the worker holds run
messages, every fifth of a second it enforces the time limits of inline runs
(``timelimits``), their inactivity timeouts (``stopping.overdue``) and self-fencing
(``fencing``: runs whose leases would run out unrenewed); and it steps the stopping of
processes (``stopping``) every tenth of a second while any must stop, handing a killed
process's attempt to the other thread to end. Twice a second it also looks at when a
lease renewal was last answered: once none has been for ``max(3 beats, a third of a
lease)``, the worker stops taking messages of its batch queues from the broker (their
claims would wait on the database while other workers could run them), and takes them
again once a renewal is answered (``pausing``: in whatever order Celery's loop runs the
two). The database thread runs the heartbeat
(``heartbeat``: leases, lost attempts, cancels, the worker's row) every
``HEARTBEAT_SECONDS``, the ends of killed attempts, a safety-net dispatch pass for its queues every
``DISPATCH_INTERVAL``, the moment a delayed task falls due and when a refill its pool
processes skipped is due (``refills``), the due ticks of schedules (``services.schedules``)
every ``SCHEDULE_INTERVAL`` and at the next tick, and a sweep of the
cluster (``services.sweeper``) every ``SWEEP_INTERVAL``, one worker at a time. Due
finalizers (``services.finalize``) run in a thread of their own, woken as often: user
code and webhooks must not delay the heartbeat.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import psutil
from django.db import close_old_connections, connections, router

from ..core.conf import get_settings
from ..core.registry import registry
from ..core.states import TaskState
from ..db.connections import close_state_connections, state_db
from ..db.sql import Clock, Tables, states_sql
from ..models import BatchQueue, BatchTask
from ..services import finalize, leases, schedules, sweeper, workers
from ..services.definitions import sync_definitions
from ..services.dispatch import dispatch_queue
from ..services.schedule_rows import sync_schedules
from ..services.workers import Identity
from ..transitions import Fence
from . import fencing, notices, refills, running, timelimits
from .heartbeat import Heartbeat, behind
from .pausing import ConsumerPause
from .stopping import HARD_LIMIT, INACTIVE, Killed, Stopper, overdue

logger = logging.getLogger(__name__)

STOP_STEP_SECONDS = 0.1
#: How often the local thread looks at when a lease renewal was last answered.
REACH_STEP_SECONDS = 0.5
#: How long a pause or resume may wait for Celery's consumer loop before it is asked
#: again (``pausing``).
ASK_AGAIN_SECONDS = 2.0


def declared_batch_queues(queues: list[str]) -> list[str]:
    """The queues among ``queues`` that the task types in the code use (the database's
    definitions may name others: ``WorkerAgent._batch_queues``)."""
    declared = {spec.options.get("queue") for spec in registry}
    prefix = get_settings().QUEUE_PREFIX
    return [queue for queue in queues if queue.startswith(prefix) or queue in declared]


class WorkerAgent:
    """See the module text."""

    def __init__(
        self,
        identity: Identity,
        *,
        queues: list[str],
        concurrency: int = 0,
        consumer: Any = None,
    ) -> None:
        self.identity = identity
        self.queues = queues
        self.concurrency = concurrency
        #: Celery's consumer of this worker (``None``: the broker is never paused).
        self.consumer = consumer
        #: The batch queues among ``queues`` (read at start and at each dispatch pass;
        #: until then, as the code declares them: the database may be out of reach).
        self.batch_queues: list[str] = declared_batch_queues(queues)
        #: Consuming from them is paused while the database is out of reach.
        self.pause = ConsumerPause(consumer) if consumer is not None else None
        self._started_at = time.monotonic()
        self.stopper = Stopper(behind=behind)
        self.heart = Heartbeat(identity, self.stopper)
        self.limits = timelimits.TimeLimits(self.stopper)
        self.fence = fencing.SelfFence(self.stopper)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="batchtasks-agent", daemon=True)
        self._next = {
            "beat": 0.0,
            "dispatch": 0.0,
            "sweep": 0.0,
            "schedules": 0.0,
            "refill": float("inf"),
        }
        #: A signal went to a process that must stop: beat soon (the local thread asks).
        self._beat_soon = False
        #: Processes the local thread killed, whose attempts the database thread ends.
        self._killed: list[Killed] = []
        self._killed_lock = threading.Lock()
        self._local_wake = threading.Event()
        self._watch_wanted = False
        self._local_next = {"watch": float("inf"), "stop": float("inf"), "reach": 0.0}
        self._local = threading.Thread(
            target=self._local_loop, name="batchtasks-local", daemon=True
        )
        #: Queues the pool processes skipped a refill of, and when to pass (``refills``).
        self._owed: dict[str, float] = {}
        self._owed_lock = threading.Lock()
        self._reader = threading.Thread(
            target=self._read_owed, name="batchtasks-refills", daemon=True
        )
        self._processes: dict[int, psutil.Process] = {}
        self._probe_wanted = threading.Event()
        self.listener = notices.Listener(
            identity.instance, router.db_for_write(BatchTask), want_probe=self._want_probe
        )
        self._finalize_due = threading.Event()
        self._finalizer = threading.Thread(
            target=self._finalize_loop, name="batchtasks-finalizers", daemon=True
        )

    def start(self) -> None:
        self._started_at = time.monotonic()
        self._thread.start()
        self._local.start()
        self._finalizer.start()
        self._reader.start()
        self.listener.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._local_wake.set()
        self._finalize_due.set()
        self.listener.stop()
        for thread in (self._local, self._thread):
            if thread.is_alive():
                thread.join(timeout)

    @property
    def db(self) -> str:
        return state_db(router.db_for_write(BatchTask))

    def _loop(self) -> None:
        try:
            self._startup()
            while not self._stop.is_set():
                self._wake.wait(self._sleep())
                self._wake.clear()
                if not self._stop.is_set():
                    self.tick()
        finally:
            try:
                workers.worker_stopped(self.identity.instance, using=self.db)
            except Exception:
                logger.warning("batchtasks could not mark worker=%s stopped", self.identity.name)
            connections.close_all()  # this thread's, to each database (tasks, app)
            close_state_connections()

    def _startup(self) -> None:
        try:
            sync_definitions()
            workers.register_worker(
                self.identity, queues=self.queues, concurrency=self.concurrency, using=self.db
            )
            # A previous boot on this machine that died (this worker restarted under its
            # name, say) gives back what it held now, not when its leases run out.
            freed = workers.reap_dead_instances(
                self.identity.process_space, exclude=self.identity.instance, using=self.db
            )
            for queue in set(freed):
                dispatch_queue(queue, using=self.db)
        except Exception:
            logger.exception("batchtasks could not register worker=%s", self.identity.name)
        try:
            sync_schedules()
        except Exception:
            logger.exception("batchtasks could not sync schedules worker=%s", self.identity.name)
        if not self._batch_queues():
            logger.warning(
                "batchtasks worker=%s consumes no batch queue (queues=%s); "
                "`manage.py batchtasks workers` prints the -Q options to use",
                self.identity.name,
                ",".join(self.queues),
            )

    def _sleep(self) -> float:
        return max(0.01, min(self._next.values()) - time.monotonic())

    def tick(self) -> None:
        """Whatever duties are due now."""
        close_old_connections()
        if self._probe_wanted.is_set():
            self._probe_wanted.clear()
            self._probe()
        if self._beat_soon:
            self._beat_soon = False
            self._next["beat"] = min(self._next["beat"], time.monotonic() + 0.2)
        try:
            self.end_killed()
        except Exception:
            logger.exception("batchtasks killed attempts not ended worker=%s", self.identity.name)
            connections[self.db].close()
        try:
            self.refill_owed()
        except Exception:
            logger.exception("batchtasks refill failed worker=%s", self.identity.name)
            connections[self.db].close()
        settings = get_settings()
        duties = (
            ("beat", self.heartbeat, settings.HEARTBEAT_SECONDS),
            ("dispatch", self.dispatch, settings.DISPATCH_INTERVAL),
            ("sweep", self.sweep, settings.SWEEP_INTERVAL),
            ("schedules", self.run_schedules, settings.SCHEDULE_INTERVAL),
        )
        for name, duty, interval in duties:
            if time.monotonic() < self._next[name]:
                continue
            self._next[name] = time.monotonic() + interval
            try:
                duty()
            except Exception:
                logger.exception("batchtasks %s failed worker=%s", name, self.identity.name)
                connections[self.db].close()  # a fresh connection next time

    # --- the local thread: no database ------------------------------------------------
    def _local_loop(self) -> None:
        while not self._stop.is_set():
            wait = min(self._local_next.values()) - time.monotonic()
            self._local_wake.wait(min(max(0.01, wait), 60.0))
            self._local_wake.clear()
            if self._stop.is_set():
                return
            try:
                self.local_tick()
            except Exception:
                logger.exception("batchtasks local duties failed worker=%s", self.identity.name)

    def local_tick(self) -> None:
        """The local duties due now (see the module text)."""
        now = time.monotonic()
        if self._watch_wanted:
            self._watch_wanted = False
            self._local_next["watch"] = min(self._local_next["watch"], now)
        if self.stopper.pending:
            self._local_next["stop"] = min(self._local_next["stop"], now + STOP_STEP_SECONDS)
        if now >= self._local_next["watch"]:
            self.watch_runs()
        if now >= self._local_next["stop"]:
            self._local_next["stop"] = now + STOP_STEP_SECONDS
            self.stop_processes()
        if not self.stopper.pending:
            self._local_next["stop"] = float("inf")
        if now >= self._local_next["reach"]:
            self._local_next["reach"] = now + REACH_STEP_SECONDS
            self.check_reach()

    def check_reach(self) -> None:
        """Stop taking messages of the batch queues while no lease renewal has been
        answered for long (the database is out of reach), and take them again once one
        is (see the module text)."""
        pause = self.pause
        if pause is None or not self.batch_queues:
            return
        settings = get_settings()
        horizon = running.horizon()  # none yet: silent since the agent started
        answered = horizon - settings.LEASE_SECONDS if horizon else self._started_at
        silent = time.monotonic() - answered
        out = silent > max(3 * settings.HEARTBEAT_SECONDS, settings.LEASE_SECONDS / 3)
        if out == pause.paused:
            pause.ask_again(ASK_AGAIN_SECONDS)  # the consumer's loop could not yet
            return
        if out:
            logger.warning(
                "batchtasks database out of reach for %.1f s: not taking messages of "
                "queues=%s worker=%s",
                silent,
                ",".join(self.batch_queues),
                self.identity.name,
            )
        else:
            logger.warning(
                "batchtasks database reached again: taking messages of queues=%s worker=%s",
                ",".join(self.batch_queues),
                self.identity.name,
            )
        pause.want(out, self.batch_queues)

    # --- duties -------------------------------------------------------------------------
    def heartbeat(self) -> None:
        """Renew leases, end lost attempts, stop what must stop, record this worker."""
        db = self.db
        freed = self.heart.beat(db)
        if self.stopper.pending:
            self._local_wake.set()
        cpu, memory = self._usage()
        workers.worker_seen(
            self.identity.instance, in_hand=self.heart.in_hand, cpu=cpu, memory=memory, using=db
        )
        self._probe()
        running.prune(alive=psutil.pid_exists)
        for queue in freed:
            dispatch_queue(queue, using=db)

    def watch_limits(self) -> None:
        """A run message came (Celery's consumer thread): watch the runs soon."""
        if self._local_next["watch"] == float("inf") and not self._watch_wanted:
            self._watch_wanted = True
            self._local_wake.set()

    def watch_runs(self) -> None:
        """Signal the inline runs past their time limits (``timelimits``) or silent past
        their inactivity timeouts, and the runs whose leases would run out unrenewed
        (``fencing``); look again in ``timelimits.STEP_SECONDS`` or when one falls due,
        while any run message is in a pool process."""
        pids = timelimits.busy_pids()
        if pids is None:  # none in hand: the next message wakes this duty (``signals``)
            self._local_next["watch"] = float("inf")
            return
        instance = self.identity.instance
        due = [self.limits.check(pids, instance), self.fence.check(pids, instance)]
        for pid in pids:
            slot = running.slot_of(pid)
            if slot is not None:
                fence = Fence(slot.task_id, slot.attempt, instance)
                if overdue(fence, pid):
                    self.stopper.stop(fence, pid, reason=INACTIVE, grace=0.0)
        step = min([d for d in due if d is not None] + [timelimits.STEP_SECONDS])
        self._local_next["watch"] = time.monotonic() + step
        if self.stopper.pending:
            self._local_next["stop"] = min(self._local_next["stop"], time.monotonic())

    def _want_probe(self) -> None:
        self._probe_wanted.set()
        self._wake.set()

    def _probe(self) -> None:
        """Show the listener that it hears (``notices``); a probe lost is only a delay."""
        try:
            notices.probe(self.identity.instance, using=self.db)
        except Exception:
            logger.warning("batchtasks notices probe failed worker=%s", self.identity.name)

    def refill_owed(self) -> None:
        """A pass for each queue whose owed refill (``refills``) is due."""
        now = time.monotonic()
        with self._owed_lock:
            due = [queue for queue, at in self._owed.items() if at <= now]
            for queue in due:
                del self._owed[queue]
            self._next["refill"] = min(self._owed.values(), default=float("inf"))
        for queue in due:
            dispatch_queue(queue, using=self.db)

    def _read_owed(self) -> None:
        """Note each refill a pool process skipped, due ``REFILL_INTERVAL`` from now.

        A pool process tells once per interval, for the slots it frees until the
        interval is over; so a pass owed already is put off to the latest such end,
        not brought forward (an earlier pass would miss slots freed after it)."""
        for queue in refills.owed():
            due = time.monotonic() + get_settings().REFILL_INTERVAL
            with self._owed_lock:
                self._owed[queue] = max(self._owed.get(queue, due), due)
                self._next["refill"] = min(self._owed.values())
            self._wake.set()

    def stop_processes(self) -> None:
        """Advance the stopping of processes (local thread); a killed one's attempt is
        ended by the database thread at once."""
        settings = get_settings()
        grace, wait = settings.KILL_GRACE, settings.LEASE_SECONDS
        killed = [k for k in self.stopper.step(kill_grace=grace, held_wait=wait) if k.gone]
        if killed:
            with self._killed_lock:
                self._killed.extend(killed)
            self._wake.set()
        # A signalled process's attempt is ended by its runner, by Celery's failure
        # signal or by the next beat: beat soon rather than in HEARTBEAT_SECONDS
        # (not during a cancel's grace period, when nothing is about to change).
        if self.stopper.signalled and not self._beat_soon:
            self._beat_soon = True
            self._wake.set()

    def end_killed(self) -> None:
        """End the attempts of the processes the local thread killed (database thread);
        those not ended yet (the database away) wait for the next tick."""
        with self._killed_lock:
            killed, self._killed = self._killed, []
        for i, one in enumerate(killed):
            try:
                self._after_kill(one)
            except Exception:
                with self._killed_lock:
                    self._killed[:0] = killed[i:]
                raise

    def _after_kill(self, killed: Killed) -> None:
        """End the killed attempt now (its process is gone: a lost run, or a time-limit
        failure if it was past its hard limit), and give back the attempts
        that waited behind it in its message: they never started, so they run again as
        they were, not as lost runs."""
        db = self.db
        queues: set[str] = set()
        held = leases.held_attempt(killed.fence, using=db)
        if held is not None and held.pid == killed.pid:
            if killed.reason == HARD_LIMIT:
                reason, message = leases.TIME_LIMIT, leases.time_limit_message(held)
            else:
                reason, message = leases.WORKER_LOST, leases.worker_lost_message(held)
            if leases.lose(held, reason, message, using=db) is not None:
                queues.add(held.queue)
        instance = self.identity.instance
        fences = [Fence(task_id, attempt, instance) for task_id, attempt in killed.behind]
        given_back, _ = leases.give_back(fences, killed.pid, using=db)
        for queue in queues | given_back:
            dispatch_queue(queue, using=db)

    def _batch_queues(self) -> list[str]:
        known = BatchQueue.objects.using(self.db).filter(name__in=self.queues)
        names = set(known.values_list("name", flat=True))
        self.batch_queues = [queue for queue in self.queues if queue in names]
        return self.batch_queues

    def dispatch(self) -> None:
        """A safety-net pass for each batch queue; wake again when a delayed task is due."""
        queues = self._batch_queues()
        for queue in queues:
            dispatch_queue(queue, using=self.db)
        wait = self._seconds_to_next_due(queues)
        if wait is not None:
            self._next["dispatch"] = min(self._next["dispatch"], time.monotonic() + wait + 0.005)

    def _seconds_to_next_due(self, queues: list[str]) -> float | None:
        """Seconds until the next delayed task of ``queues`` falls due, by the database's
        clock (this host's may differ)."""
        if not queues:
            return None
        db_connection = connections[self.db]
        t, clock = Tables(db_connection), Clock(db_connection)
        marks = ", ".join(["%s"] * len(queues))
        sql = (
            f"SELECT {clock.seconds_until('MIN(t.run_after)')} FROM {t.task} t "
            f"JOIN {t.definition} d ON d.id = t.definition_id "
            f"WHERE t.state = {states_sql(TaskState.NEW)} AND t.run_after > {clock.now} "
            f"AND d.queue IN ({marks})"
        )
        with db_connection.cursor() as cursor:
            cursor.execute(sql, queues)
            value = cursor.fetchone()[0]
        return None if value is None else max(0.0, float(value))

    def run_schedules(self) -> None:
        """Claim the due ticks of the cluster's schedules (every worker may: a tick runs
        once, ``services.schedules``); wake again at the next tick if it comes sooner.
        Submits go through the ordinary connection, as any submit's (not the state one)."""
        done = schedules.run_due(using=router.db_for_write(BatchTask))
        if done.next_in is not None:
            at = time.monotonic() + done.next_in + 0.005
            self._next["schedules"] = min(self._next["schedules"], at)

    def sweep(self) -> None:
        """Sweep the cluster, unless another worker is at it; wake the finalizers' thread."""
        sweeper.sweep(using=self.db, instance=self.identity.instance, finalize_due=False)
        self._finalize_due.set()

    def _finalize_loop(self) -> None:
        """Run the due finalizers of the cluster each time the agent wakes this thread."""
        try:
            while self._finalize_due.wait() and not self._stop.is_set():
                self._finalize_due.clear()
                try:
                    finalize.run_due(using=self.db)
                except Exception:
                    logger.exception("batchtasks finalizers failed worker=%s", self.identity.name)
                    connections[self.db].close()  # a fresh connection next time
        finally:
            connections.close_all()  # this thread's, to each database (tasks, app)
            close_state_connections()

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
