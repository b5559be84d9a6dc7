"""The faults: each takes the stack, does its harm, records what it did to which
container in ``Faults`` and returns the span of the fault (database clock).

The fault's end is when the harm is undone and the service answers again."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from .ledger import Faults, Span
from .stack import DRIVER, Stack


@dataclass(frozen=True)
class Settings:
    """The stack's timing (its env file) and the scenarios' lengths."""

    lease: float
    sweep: float
    broker_pause: float = 20.0

    @property
    def settle(self) -> float:
        """How long after a fault every lost run must be back: a lease and one sweep."""
        return self.lease + self.sweep


Scenario = Callable[[Stack, Faults, Settings], Span]


def busy_worker(stack: Stack, default: str, wait: float = 5.0) -> str:
    """A worker with a run in hand (so that the fault strikes mid-run), else ``default``."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        rows = stack.query("SELECT DISTINCT host FROM chaos.runs WHERE ended_at IS NULL")
        hosts = sorted(h for (h,) in rows if h in stack.workers)
        if hosts:
            return default if default in hosts else hosts[0]
        time.sleep(0.1)
    return default


def crash_recovery(stack: Stack, faults: Faults, s: Settings) -> Span:
    """SIGKILL one worker container mid-run; start it again two seconds later."""
    worker = busy_worker(stack, "chaos-1")
    start = stack.now()
    stack.docker("kill", "--signal", "KILL", service=worker)
    faults.killed[worker].append(stack.now())
    time.sleep(2)
    stack.docker("start", service=worker)
    return start, stack.now()


def postgres_restart(stack: Stack, faults: Faults, s: Settings) -> Span:
    """Stop PostgreSQL (fast shutdown) and start it again."""
    start = stack.now()
    stack.docker("kill", "--signal", "INT", service="postgres")
    _until(lambda: not stack.running("postgres"), 60)
    stack.docker("start", service="postgres")
    return start, stack.now()  # the first answer after the restart


def broker_restart_empty(stack: Stack, faults: Faults, s: Settings) -> Span:
    """Restart Redis, which keeps nothing: every message in it is gone."""
    start = stack.now()
    stack.docker("restart", "--time", "5", service="redis")
    return start, stack.now()


def broker_pause(stack: Stack, faults: Faults, s: Settings) -> Span:
    """Freeze Redis (``docker pause``) for ``broker_pause`` seconds."""
    start = stack.now()
    stack.docker("pause", service="redis")
    time.sleep(s.broker_pause)
    stack.docker("unpause", service="redis")
    return start, stack.now()


def worker_paused(stack: Stack, faults: Faults, s: Settings) -> Span:
    """Freeze a worker mid-run for longer than its lease (plus two sweeps): its runs are
    given to others meanwhile, and what it writes once thawed must be refused."""
    worker = busy_worker(stack, "chaos-2")
    start = stack.now()
    stack.docker("pause", service=worker)
    time.sleep(s.lease + 2 * s.sweep + 2)
    stack.docker("unpause", service=worker)
    end = stack.now()
    faults.paused[worker].append((start, end))
    _watch_stopped_runs(stack, faults, worker, since=start, seconds=s.lease)
    return start, end


def _watch_stopped_runs(
    stack: Stack, faults: Faults, worker: str, *, since: datetime, seconds: float
) -> None:
    """Note when the processes of the runs a thawed worker had in hand are gone (its
    heartbeat stops a run whose lease was lost): the ledger cannot say it itself."""
    open_runs = stack.query(
        "SELECT DISTINCT pid FROM chaos.runs WHERE host = %s AND ended_at IS NULL "
        "AND started_at < %s",
        (worker, since),
    )
    pids = {int(pid) for (pid,) in open_runs}
    deadline = time.monotonic() + seconds
    while pids and time.monotonic() < deadline:
        for pid in sorted(pids):
            if not stack.alive(worker, pid):
                faults.gone[(worker, pid)] = stack.now()
                pids.discard(pid)
        time.sleep(0.2)


def pg_backend_kill(stack: Stack, faults: Faults, s: Settings) -> Span:
    """``pg_terminate_backend`` every backend of the database but the driver's."""
    start = stack.now()
    stack.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND backend_type = 'client backend' AND application_name <> %s",
        (DRIVER,),
    )
    return start, stack.now()


SCENARIOS: dict[str, Scenario] = {
    "crash_recovery": crash_recovery,
    "postgres_restart": postgres_restart,
    "broker_restart_empty": broker_restart_empty,
    "broker_pause": broker_pause,
    "worker_paused": worker_paused,
    "pg_backend_kill": pg_backend_kill,
}
#: What `.ci/docker-chaos --quick` (make test) runs.
QUICK = ("crash_recovery", "worker_paused", "pg_backend_kill")


def _until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)
