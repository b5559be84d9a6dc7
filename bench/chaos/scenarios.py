"""The faults: each takes the stack, does its harm, records what it did to which
container in ``Faults`` and returns the span of the fault (database clock).

The fault's end is when the harm is undone and the service answers again."""

from __future__ import annotations

import errno
import os
import random
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .ledger import Faults, Span
from .stack import DRIVER, Stack

#: plugins/clockskew's offset file in a worker container.
CLOCK_OFFSET_FILE = "/tmp/batchtasks-clock-offset"


@dataclass(frozen=True)
class Settings:
    """The stack's timing (its env file) and the scenarios' lengths."""

    lease: float
    sweep: float
    broker_pause: float = 20.0
    #: How long PostgreSQL stays read-only (read_only_failover).
    read_only: float = 20.0
    #: How long an outside client holds the connections (pool_exhaustion).
    pool_hold: float = 30.0
    #: How long workers are killed at random (repeated_kills).
    kills_for: float = 180.0
    #: How long a session holds a transaction or a read open (idle_in_tx, active_readers).
    long_session: float = 180.0
    #: How long the flood at priority 100 lasts (priority_starvation).
    flood_for: float = 60.0
    #: The workers' BATCHTASKS_PRIORITY_AGING (seconds per point; 0: off), which
    #: .ci/docker-chaos sets from CHAOS_PRIORITY_AGING.
    aging: float = 0.0
    #: How many tasks fail twice, then succeed (retry_storm).
    storm_tasks: int = 10_000
    #: How long two workers' wall clocks are off (clock_skew), and by how much.
    skew_for: float = 60.0
    skew: float = 3600.0
    #: How long PostgreSQL's disk stays full (full_disk).
    disk_full: float = 20.0
    #: How much memory above what it uses a worker may take (oom_kill), in MiB.
    oom_margin: int = 128
    #: How long finalizers are struck at (finalizer_faults).
    finalizer_faults_for: float = 20.0

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


def db_partition(stack: Stack, faults: Faults, s: Settings) -> Span:
    """Cut a worker with a run in hand off PostgreSQL, not Redis, for longer than a lease
    (plus two sweeps): its runs are given to others meanwhile; it must work again after."""
    return _partition(stack, faults, s, busy_worker(stack, "chaos-3"), "db")


def broker_partition(stack: Stack, faults: Faults, s: Settings) -> Span:
    """Cut a worker with a run in hand off Redis, not PostgreSQL, for longer than a lease
    (plus two sweeps); it must work again after."""
    return _partition(stack, faults, s, busy_worker(stack, "chaos-1"), "broker")


def _partition(stack: Stack, faults: Faults, s: Settings, worker: str, network: str) -> Span:
    start = stack.now()
    stack.network("disconnect", network, service=worker)
    time.sleep(s.lease + 2 * s.sweep + 2)
    stack.network("connect", network, service=worker)
    end = stack.now()
    faults.hindered[worker].append((start, end))
    return start, end


def read_only_failover(stack: Stack, faults: Faults, s: Settings) -> Span:
    """PostgreSQL read-only for ``read_only`` seconds, as a failover looks to its clients:
    ``default_transaction_read_only`` on and a reload make every write of every session
    fail with SQLSTATE 25006; then only new sessions may write again (a setting of the
    database, read at connection), as only a new connection reaches the new primary.
    Every worker must reconnect and work again."""
    start = stack.now()
    stack.execute("ALTER SYSTEM SET default_transaction_read_only = on")
    stack.query("SELECT pg_reload_conf()")
    time.sleep(s.read_only)
    stack.execute(f"ALTER DATABASE {stack.database} SET default_transaction_read_only = off")
    end = stack.now()
    for worker in stack.workers:
        faults.hindered[worker].append((start, end))
    return start, end


def writable_again(stack: Stack) -> None:
    """Every session may write again (read_only_failover's settings undone)."""
    stack.execute("ALTER SYSTEM RESET default_transaction_read_only")
    stack.query("SELECT pg_reload_conf()")
    stack.execute(f"ALTER DATABASE {stack.database} RESET default_transaction_read_only")


def pool_exhaustion(stack: Stack, faults: Faults, s: Settings) -> Span:
    """An outside client holds all but three of ``max_connections`` for ``pool_hold``
    seconds; every worker must work again after."""
    limit = int(stack.query("SHOW max_connections")[0][0])
    used = int(
        stack.query("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")[
            0
        ][0]
    )
    start = stack.now()
    held = stack.hold_connections(limit - used - 3)
    try:
        time.sleep(s.pool_hold)
    finally:
        for connection in held:
            connection.close()
    end = stack.now()
    for worker in stack.workers:
        faults.hindered[worker].append((start, end))
    return start, end


def repeated_kills(stack: Stack, faults: Faults, s: Settings) -> Span:
    """SIGKILL a random worker every 10-20 s for ``kills_for`` seconds, each started again
    two seconds later."""
    chance = random.Random()
    start = stack.now()
    deadline = time.monotonic() + s.kills_for
    while time.monotonic() < deadline:
        time.sleep(chance.uniform(10, 20))
        _kill_and_restart(stack, faults, chance.choice(stack.workers))
    return start, stack.now()


def leader_failover(stack: Stack, faults: Faults, s: Settings) -> Span:
    """SIGKILL the worker that is sweeping right now (it holds the sweeper's advisory lock:
    ``pg_locks``, and the address of its session), started again two seconds later."""
    worker = _sweeping_worker(stack, wait=4 * s.sweep + 5)
    if worker is None:
        raise RuntimeError("no worker was seen sweeping")
    start = stack.now()
    _kill_and_restart(stack, faults, worker)
    return start, stack.now()


def _sweeping_worker(stack: Stack, wait: float) -> str | None:
    from batchtasks.services.sweeper import LOCK_KEY

    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        rows = stack.query(
            "SELECT host(a.client_addr) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted "
            "AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
            (LOCK_KEY,),
        )
        for (address,) in rows:
            if address and (worker := stack.service_at(address)):
                return worker
        time.sleep(0.01)
    return None


def _kill_and_restart(stack: Stack, faults: Faults, worker: str) -> None:
    stack.docker("kill", "--signal", "KILL", service=worker)
    faults.killed[worker].append(stack.now())
    time.sleep(2)
    stack.docker("start", service=worker)


def idle_in_tx(stack: Stack, faults: Faults, s: Settings) -> Span:
    """A session idle in a transaction whose snapshot read the task table, for
    ``long_session`` seconds: no row version dead since then can be removed meanwhile."""
    return _long_session(stack, faults, s, "SELECT count(*) FROM {table}")


def active_readers(stack: Stack, faults: Faults, s: Settings) -> Span:
    """A repeatable-read query on the task table that runs ``long_session`` seconds."""
    return _long_session(
        stack, faults, s, "SELECT count(*) FROM {table}, pg_sleep({seconds}) LIMIT 1"
    )


def _long_session(stack: Stack, faults: Faults, s: Settings, sql: str) -> Span:
    from batchtasks.models import BatchTask

    table = BatchTask._meta.db_table
    before = stack.dead_tuples(table)
    start = stack.now()
    with stack.session() as session, session.transaction():
        session.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        session.execute(sql.format(table=table, seconds=s.long_session))
        time.sleep(max(0.0, s.long_session - (stack.now() - start).total_seconds()))
        during = stack.dead_tuples(table)
    end = stack.now()
    faults.notes.append(f"dead tuples of {table}: {before} before, {during} at the end")
    return start, end


def priority_starvation(stack: Stack, faults: Faults, s: Settings) -> Span:
    """Five tasks at priority 0 wait while a flood at priority 100, kept 40 tasks deep,
    lasts ``flood_for`` seconds: how long they wait (a note). The dispatcher admits by
    priority first, so without aging they may starve for as long as the flood lasts;
    with ``PRIORITY_AGING`` (``s.aging``) each should start within ``100 * s.aging``
    seconds and a sweep, plus the turns ahead of it at priority 100."""
    from batchtasks import BatchTask

    from .load import Load

    low = [int(BatchTask.submit("chaos.work", {"seconds": 0.4}, priority=0).pk) for _ in range(5)]
    start = stack.now()
    flood = Load(stack, backlog=40, seconds=0.4, priority=100)
    flood.start()
    time.sleep(s.flood_for)
    faults.submitted += low + flood.stop()
    end = stack.now()
    rows = stack.query(
        "SELECT task_id, min(started_at) FROM chaos.runs WHERE task_id = ANY(%s) "
        "AND started_at < %s GROUP BY task_id",
        (low, end),
    )
    waits = [(first - start).total_seconds() for _, first in rows]
    flood_tasks = len(faults.submitted) - len(low)
    faults.notes.append(starvation_note(waits, len(low), flood_tasks, s))
    return start, end


def starvation_note(waits: list[float], low: int, flood_tasks: int, s: Settings) -> str:
    """What priority_starvation saw: how many of the ``low`` tasks at priority 0 started
    during the flood, and after how many seconds at most (``waits``: of those started)."""
    aging = f"aging {s.aging:g} s a point" if s.aging else "no aging"
    longest = f", the last after {max(waits):.1f} s" if waits else ""
    return (
        f"priority 0 ({aging}): {len(waits)} of {low} started during the {s.flood_for:g} s "
        f"flood at priority 100 ({flood_tasks} tasks){longest}"
    )


def retry_storm(stack: Stack, faults: Faults, s: Settings) -> Span:
    """``storm_tasks`` tasks of ``chaos.flaky`` (attempts 1 and 2 fail, the third succeeds,
    no backoff) submitted at once beside the load; the fault lasts until all are final.
    None may be completed twice; each must run exactly three times."""
    from batchtasks import BatchTask
    from plugins.chaos import FLAKY

    start = stack.now()
    storm: list[int] = []
    while len(storm) < s.storm_tasks:
        batch = min(500, s.storm_tasks - len(storm))
        storm += [int(t.pk) for t in BatchTask.submit_many(FLAKY, [{}] * batch)]
    faults.submitted += storm
    faults.other_type.update(storm)
    deadline = time.monotonic() + 60 + s.storm_tasks
    while time.monotonic() < deadline and _finals(stack, storm) < len(storm):
        time.sleep(1)
    end = stack.now()
    runs = stack.query(
        "SELECT count(*) FROM chaos.runs WHERE task_id = ANY(%s) GROUP BY task_id", (storm,)
    )
    off = sum(1 for (n,) in runs if n != 3) + len(storm) - len(runs)
    faults.notes.append(
        f"{len(storm)} tasks failing twice: {_finals(stack, storm)} final in "
        f"{(end - start).total_seconds():.0f} s, {off} not run exactly three times"
    )
    return start, end


def clock_skew(stack: Stack, faults: Faults, s: Settings) -> Span:
    """One worker's wall clock ``skew`` seconds ahead, another's as far behind, for
    ``skew_for`` seconds and at least three leases and sweeps (plugins/clockskew: the
    offset file its sitecustomize reads). The engine takes every time it compares from
    the database's clock, so nothing may change; the notes say how far off each worker's
    Python clock was, as read in the container."""
    offsets = {"chaos-1": s.skew, "chaos-2": -s.skew}
    start = stack.now()
    for worker, seconds in offsets.items():
        stack.exec(worker, "sh", "-c", f"echo {seconds:+g} > {CLOCK_OFFSET_FILE}")
    time.sleep(1.5)  # the hook reads the file again at most once a second
    for worker in offsets:
        faults.notes.append(f"{worker}'s clock {round(_clock_off(stack, worker)):+d} s off")
    time.sleep(max(s.skew_for, 3 * s.settle))
    for worker in offsets:
        stack.exec(worker, "rm", "-f", CLOCK_OFFSET_FILE)
    time.sleep(1.5)
    end = stack.now()
    for worker in offsets:
        faults.notes.append(f"{worker}'s clock {round(_clock_off(stack, worker)):+d} s off after")
    return start, end


def _clock_off(stack: Stack, worker: str) -> float:
    """How far ``worker``'s Python wall clock (``time.time`` in a new process, which the
    hook shifts as it does the worker's) is from the database's."""
    there = float(stack.exec(worker, "python", "-c", "import time; print(time.time())"))
    return there - stack.now().timestamp()


#: The worker that takes ``chaos.hog`` (docker/compose.chaos.yaml), whose memory oom_kill
#: limits.
OOM_WORKER = "chaos-1"
#: How long each chaos.hog task sleeps (before the hog allocates).
HOG_SECONDS = 0.05


def oom_kill(stack: Stack, faults: Faults, s: Settings) -> Span:
    """The kernel's OOM killer ends a pool process mid-run: chaos-1's memory is limited
    (``docker update --memory``, no swap) to what it uses plus ``oom_margin``
    MiB, and eight quick ``chaos.hog`` tasks are submitted (packed four to a message
    once four more have measured the type's run time) whose second allocates until
    killed (on its first run only). The limit is raised again (4 GiB: a limit
    cannot be removed) once the process is gone. The check: the hog ran exactly twice
    (a lost run, then a success), its neighbours exactly once."""
    from batchtasks import BatchTask
    from plugins.chaos import HOG, HOG_PACK

    worker = OOM_WORKER
    # Four quick ones first: the type's run time measured, its backlog shares messages.
    warm = [int(t.pk) for t in BatchTask.submit_many(HOG, [{"seconds": HOG_SECONDS}] * 4)]
    faults.submitted += warm
    faults.other_type.update(warm)
    _until(lambda: _finals(stack, warm) == len(warm), 30)
    usage = int(_cgroup(stack, worker, "memory.usage_in_bytes", "memory.current"))
    limit = usage + (s.oom_margin << 20)
    kills_before = _oom_kills(stack, worker)
    stack.docker("update", "--memory", str(limit), "--memory-swap", str(limit), service=worker)
    start = stack.now()
    params: list[dict[str, Any]] = [{"seconds": HOG_SECONDS} for _ in range(2 * HOG_PACK)]
    params[1]["hog"] = True
    ids = [int(t.pk) for t in BatchTask.submit_many(HOG, params)]
    faults.submitted += ids
    faults.other_type.update(ids)
    faults.context.update(hog=ids[1], neighbours=[ids[0], *ids[2:]])
    _until(lambda: _oom_kills(stack, worker) > kills_before, 60)
    kills = _oom_kills(stack, worker) - kills_before
    first = stack.query(
        "SELECT pid FROM chaos.runs WHERE task_id = %s AND ended_at IS NULL "
        "ORDER BY started_at LIMIT 1",
        (ids[1],),
    )
    if first:  # the ledger's end of the killed run: when its process is seen gone
        pid = int(first[0][0])
        _until(lambda: not stack.alive(worker, pid), 30)
        faults.gone[(worker, pid)] = stack.now()
    stack.docker("update", "--memory", "4g", "--memory-swap", "4g", service=worker)
    end = stack.now()
    faults.notes.append(
        f"{worker} limited to {limit >> 20} MiB ({usage >> 20} MiB in use): the kernel's "
        f"OOM killer killed {kills} process(es) there (memory.oom_control)"
    )
    if not kills:
        faults.broken.append(f"no OOM kill in {worker} within 60 s")
    return start, end


def _cgroup(stack: Stack, worker: str, v1: str, v2: str) -> str:
    """A file of ``worker``'s memory cgroup as the container sees it: ``v1`` of cgroup
    v1's memory controller, else ``v2`` of cgroup v2 (not tried yet: this machine has v1)."""
    try:
        return stack.exec(worker, "cat", f"/sys/fs/cgroup/memory/{v1}")
    except subprocess.CalledProcessError:
        return stack.exec(worker, "cat", f"/sys/fs/cgroup/{v2}")


def _oom_kills(stack: Stack, worker: str) -> int:
    """The OOM kills in ``worker``'s memory cgroup so far (the ``oom_kill`` line of
    ``memory.oom_control``, cgroup v1, or ``memory.events``, v2)."""
    text = _cgroup(stack, worker, "memory.oom_control", "memory.events")
    found = re.search(r"^oom_kill (\d+)$", text, re.MULTILINE)
    return int(found.group(1)) if found else 0


def check_oom_kill(stack: Stack, faults: Faults, s: Settings) -> None:
    """The hog's first run ended as a lost run and it ran again once; its neighbours
    ran once each (none given back ran twice, none was lost)."""
    from batchtasks.models import BatchTask

    hog, neighbours = faults.context["hog"], faults.context["neighbours"]
    table = BatchTask._meta.db_table
    rows = stack.query(
        f"SELECT id, state, attempt, lost_runs FROM {table} WHERE id = ANY(%s)",
        ([hog, *neighbours],),
    )
    tasks = {int(r[0]): r[1:] for r in rows}
    runs: dict[int, list[tuple[str, int, str | None]]] = {t: [] for t in [hog, *neighbours]}
    for task_id, host, pid, outcome in stack.query(
        "SELECT task_id, host, pid, outcome FROM chaos.runs WHERE task_id = ANY(%s) "
        "ORDER BY started_at",
        ([hog, *neighbours],),
    ):
        runs[int(task_id)].append((host, int(pid), outcome))
    killed = runs[hog][0][:2] if runs[hog] else None
    beside = [n for n in neighbours if any(r[:2] == killed for r in runs[n])]
    faults.notes.append(
        f"neighbours that ran in the killed process (its message, before the hog): {beside}"
    )
    state, attempt, lost = tasks.get(hog, (None, None, None))
    faults.notes.append(
        f"the hog (task {hog}) ran {len(runs[hog])} times, ended {state}, attempt {attempt}, "
        f"{lost} lost run(s); its neighbours ran {[len(runs[n]) for n in neighbours]} times, "
        f"ended {sorted({tasks[n][0] for n in neighbours if n in tasks})}, attempts and lost "
        f"runs {[tasks[n][1:] for n in neighbours if n in tasks]}"
    )
    if (len(runs[hog]), state, lost) != (2, "succeeded", 1):
        faults.broken.append(f"the hog ran {len(runs[hog])} times, ended {state}, {lost} lost runs")
    twice = [n for n in neighbours if len(runs[n]) != 1]
    if twice:
        faults.broken.append(f"neighbours {twice} did not run exactly once")


def full_disk(stack: Stack, faults: Faults, s: Settings) -> Span:
    """PostgreSQL's disk full for ``disk_full`` seconds: its data directory is on a file
    system of its own (``CHAOS_PG_DISK``, a loop-mounted ext4 of .ci/docker-chaos), which
    a file of the driver's fills to the last block (``fallocate``, then written until
    ``ENOSPC``); then the file is removed. Every write that needs a new block fails
    (``could not extend file``, SQLSTATE 53100) meanwhile; every worker must work again
    after."""
    data = os.environ.get("CHAOS_PG_DISK")
    if not data:
        raise RuntimeError(
            "full_disk needs PostgreSQL's data on a file system of its own (CHAOS_PG_DISK, "
            "which .ci/docker-chaos sets where it can mount one)"
        )
    fills = [os.path.join(data, "chaos-fill"), os.path.join(data, "chaos-fill-rest")]
    start = stack.now()
    disk = os.statvfs(data)
    # All but 16 MiB at once (the file's own extents take blocks too), the rest written.
    size = max(disk.f_bavail * disk.f_frsize - (16 << 20), 0)
    try:
        with open(fills[0], "wb") as fh:
            os.posix_fallocate(fh.fileno(), 0, size)
        rest = _fill_up(fills[1])
        left = os.statvfs(data).f_bavail
        time.sleep(s.disk_full)
    finally:
        for path in fills:
            if os.path.exists(path):
                os.unlink(path)
    end = stack.now()
    for worker in stack.workers:
        faults.hindered[worker].append((start, end))
    log = stack.logs("postgres", start)
    faults.notes.append(
        f"{(size + rest) >> 20} MiB filled ({left} blocks left) for "
        f"{(end - start).total_seconds():.0f} s; "
        f"PostgreSQL logged {log.count('No space left on device')} 'No space left on device', "
        f"{log.count('could not extend file')} 'could not extend file', "
        f"{log.count('could not write init file')} 'could not write init file' (a new "
        f"session refused), {log.count('PANIC')} PANIC"
    )
    return start, end


def _fill_up(path: str) -> int:
    """Write ``path`` until its file system has no block left; how many bytes it took."""
    written = 0
    chunk = b"\0" * 4096
    with open(path, "wb", buffering=0) as fh:
        while True:
            try:
                written += fh.write(chunk) or 0
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return written


def finalizer_faults(stack: Stack, faults: Faults, s: Settings) -> Span:
    """Faults while finalizers run, for ``finalizer_faults_for`` seconds beside a load of
    ``chaos.hooked`` (a finalizer that takes a second after its ledger row, then a
    webhook to the receiver): first the worker running a finalizer right now is
    SIGKILLed (started again 2 s later), then, five times, every backend but the
    driver's is terminated 0.8 s into a running finalizer (before it records). The check
    (once every outcome is recorded): each outcome's finalizer and webhook called at
    least once, and recorded exactly once (a trigger on the task table counts each
    ``pending`` to done or failed); repeated calls are counted, not failures."""
    from batchtasks.models import BatchTask
    from plugins.chaos import HOOKED

    from .load import Load

    faults.finalizers_struck = True
    stack.execute(RECORDS.format(table=BatchTask._meta.db_table))
    hooked = Load(stack, backlog=6, seconds=0.2, type_name=HOOKED)
    hooked.start()
    start = stack.now()
    deadline = time.monotonic() + s.finalizer_faults_for
    struck: list[tuple[str, int]] = []
    found = _finalizing(stack, hooked.submitted, wait=s.finalizer_faults_for)
    if found is not None:
        struck.append(found[:2])
        _kill_and_restart(stack, faults, found[0])
    for _ in range(5):
        found = _finalizing(stack, hooked.submitted, wait=max(deadline - time.monotonic(), 5))
        if found is None:
            continue
        time.sleep(max(0.0, 0.8 - found[2]))
        struck.append(found[:2])
        pg_backend_kill(stack, faults, s)
    time.sleep(max(0.0, deadline - time.monotonic()))
    ids = hooked.stop()
    end = stack.now()
    faults.submitted += ids
    faults.other_type.update(ids)
    faults.context["hooked"] = ids
    reconnects = sum(
        stack.logs(w, start).count("database connection lost; reconnecting") for w in stack.workers
    )
    faults.notes.append(
        f"{len(ids)} chaos.hooked tasks; a worker killed in the finalizer of task "
        f"{struck[0][1] if struck else '-'}, backends terminated in those of "
        f"{[t for _, t in struck[1:]]}; the workers logged {reconnects} reconnects"
    )
    return start, end


#: A trigger that notes each record of an outcome's finalizers in chaos.records.
RECORDS = """
CREATE TABLE IF NOT EXISTS chaos.records (
    task_id bigint NOT NULL, attempt int NOT NULL, state text NOT NULL,
    number int NOT NULL, at timestamptz NOT NULL
);
TRUNCATE chaos.records;
CREATE OR REPLACE FUNCTION chaos.note_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.finalize_state = 'pending' AND NEW.finalize_state <> 'pending' THEN
        INSERT INTO chaos.records VALUES
            (NEW.id, NEW.attempt, NEW.finalize_state, NEW.finalize_attempts, clock_timestamp());
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS chaos_records ON {table};
CREATE TRIGGER chaos_records AFTER UPDATE ON {table}
    FOR EACH ROW EXECUTE FUNCTION chaos.note_record();
"""


def _finalizing(stack: Stack, ids: list[int], wait: float) -> tuple[str, int, float] | None:
    """A worker in a finalizer of one of ``ids`` right now (its row written less than
    0.5 s ago): its host, the task, and how long ago the row was written."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        rows = stack.query(
            "SELECT host, task_id, extract(epoch FROM clock_timestamp() - at) FROM chaos.finals "
            "WHERE task_id = ANY(%s) AND at > clock_timestamp() - interval '0.5 s' "
            "ORDER BY at DESC LIMIT 1",
            (list(ids),),
        )
        for host, task_id, age in rows:
            if host in stack.workers:
                return host, int(task_id), float(age)
        time.sleep(0.05)
    return None


def check_finalizer_faults(stack: Stack, faults: Faults, s: Settings) -> None:
    """Once every chaos.hooked outcome is recorded (at most a ``FINALIZE_LEASE`` and
    30 s): each one's finalizer and webhook called at least once and its record written
    exactly once; the repeats in the notes."""
    from batchtasks.core.conf import get_settings
    from batchtasks.models import BatchTask

    ids, table = faults.context["hooked"], BatchTask._meta.db_table
    deadline = time.monotonic() + get_settings().FINALIZE_LEASE + 30
    while time.monotonic() < deadline and _pending(stack, table, ids):
        time.sleep(1)
    tasks = {
        int(i): (a, st, fs, n)
        for i, a, st, fs, n in stack.query(
            f"SELECT id, attempt, state, finalize_state, finalize_attempts FROM {table} "
            "WHERE id = ANY(%s)",
            (ids,),
        )
    }
    calls = _counts(stack, "chaos.finals", ids)
    hooks = _counts(stack, "soak.webhooks", ids)
    records = _counts(stack, "chaos.records", ids)
    stack.execute(f"DROP TRIGGER IF EXISTS chaos_records ON {table}")
    uncalled = [i for i in ids if not calls.get((i, tasks[i][0]))]
    unhooked = [i for i in ids if not hooks.get((i, tasks[i][0]))]
    unrecorded = [i for i in ids if records.get((i, tasks[i][0]), 0) != 1 or tasks[i][2] != "done"]
    again = sum(n - 1 for n in calls.values() if n > 1)
    hooks_again = sum(n - 1 for n in hooks.values() if n > 1)
    claims = sum(1 for i in ids if tasks[i][3] > 1)
    faults.notes.append(
        f"finalizer calls {sum(calls.values())} for {len(ids)} outcomes ({again} repeats), "
        f"webhook calls {sum(hooks.values())} ({hooks_again} repeats), "
        f"records {sum(records.values())}; {claims} outcomes claimed more than once"
    )
    for what, found in (
        ("finalizer never called", uncalled),
        ("webhook never called", unhooked),
        ("not recorded done exactly once", unrecorded),
    ):
        if found:
            faults.broken.append(f"{what}: tasks {found[:10]} ({len(found)})")


def _pending(stack: Stack, table: str, ids: list[int]) -> bool:
    rows = stack.query(
        f"SELECT count(*) FROM {table} WHERE id = ANY(%s) AND finalize_state = 'pending'", (ids,)
    )
    return int(rows[0][0]) > 0


def _counts(stack: Stack, table: str, ids: list[int]) -> dict[tuple[int, int], int]:
    """Rows of ``table`` by (task, attempt)."""
    rows = stack.query(
        f"SELECT task_id, attempt, count(*) FROM {table} WHERE task_id = ANY(%s) "
        "GROUP BY task_id, attempt",
        (ids,),
    )
    return {(int(t), int(a)): int(n) for t, a, n in rows}


def _finals(stack: Stack, ids: list[int]) -> int:
    rows = stack.query(
        "SELECT count(DISTINCT task_id) FROM chaos.finals WHERE task_id = ANY(%s)", (ids,)
    )
    return int(rows[0][0])


SCENARIOS: dict[str, Scenario] = {
    "crash_recovery": crash_recovery,
    "postgres_restart": postgres_restart,
    "broker_restart_empty": broker_restart_empty,
    "broker_pause": broker_pause,
    "worker_paused": worker_paused,
    "pg_backend_kill": pg_backend_kill,
    "db_partition": db_partition,
    "broker_partition": broker_partition,
    "read_only_failover": read_only_failover,
    "pool_exhaustion": pool_exhaustion,
    "repeated_kills": repeated_kills,
    "leader_failover": leader_failover,
    "idle_in_tx": idle_in_tx,
    "active_readers": active_readers,
    "priority_starvation": priority_starvation,
    "retry_storm": retry_storm,
    "clock_skew": clock_skew,
    "oom_kill": oom_kill,
    "full_disk": full_disk,
    "finalizer_faults": finalizer_faults,
}
#: What to undo once a scenario's tasks are final (the driver calls it).
AFTERWARDS: dict[str, Callable[[Stack], None]] = {
    "read_only_failover": writable_again,
}
#: What a scenario checks itself once its tasks are final (it may wait; the driver calls
#: it before it takes the end bound), adding to ``Faults.notes`` and ``Faults.broken``.
CHECKS: dict[str, Callable[[Stack, Faults, Settings], None]] = {
    "oom_kill": check_oom_kill,
    "finalizer_faults": check_finalizer_faults,
}
#: What `.ci/docker-chaos --quick` (make test) runs.
QUICK = ("crash_recovery", "worker_paused", "pg_backend_kill")


def _until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)
