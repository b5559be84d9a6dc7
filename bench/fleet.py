"""The step ``fleet`` of ``make bench-scale`` (``python -m bench.scale fleet``): what the
dispatcher's and the sweeper's passes cost with a fleet of workers registered, so that
the figures of one machine can be carried to many.

``FLEET_WORKERS`` (50) simulated workers, as on other hosts (a process space of their
own, so no sweeper here takes them for dead): each a ``BatchWorker`` row, online, with
``FLEET_CONCURRENCY`` (4) pool processes consuming the no-op queue and a queue of its own
(``batch.scale.fleet``), and as many running tasks of that queue, leased. They beat at
the real interval (``HEARTBEAT_SECONDS``), spread evenly over it, from one thread: each
beat runs what a worker's beat asks of the database (the attempts it runs,
``renew_leases``, ``worker_seen``). Measured without the fleet, then with it beating
(``SCALE_PASSES`` each, p50 / p95, milliseconds as the client saw them):

- a dispatch pass of the no-op queue that admits a window from 10,000 waiting tasks
  (put back after each, as in step ``backlog``);
- a pass with the window full, which admits nothing: what the agents' safety net
  (every ``DISPATCH_INTERVAL``, in every worker, for each queue it consumes) mostly runs;
- a sweep with nothing to do but look (``sweeper.sweep``: the lock, expired leases,
  dead instances, lost messages, purge, silent workers);
- the sweep's lock taken and let go alone: about what each other worker's attempt costs
  every ``SWEEP_INTERVAL`` (it finds the lock taken);
- one beat of a simulated worker (with the fleet).

From these, the database time of the whole fleet's housekeeping each second, idle.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from bench.run import percentile

FLEET_WORKERS = int(os.environ.get("FLEET_WORKERS", "50"))
FLEET_CONCURRENCY = int(os.environ.get("FLEET_CONCURRENCY", "4"))
FLEET_QUEUE = "batch.scale.fleet"
FLEET_TYPE = "scale.fleet"
BACKLOG = 10_000
Row = tuple[str, str, str]


def instance(i: int) -> str:
    return f"fleet{i:04d}"


def register_fleet(definition_id: int, queues: list[str]) -> list[str]:
    """The fleet's worker rows and their running, leased tasks; their instances."""
    from django.db import connection
    from django.db.models.functions import Now

    from batchtasks.core.conf import get_settings
    from batchtasks.models import BatchWorker

    instances = [instance(i) for i in range(FLEET_WORKERS)]
    BatchWorker.objects.bulk_create(
        BatchWorker(
            name=f"fleet@sim-{i}",
            instance=name,
            host=f"sim-{i}",
            process_space=f"simulated/{i}",
            pid=1000 + i,
            queues=queues,
            concurrency=FLEET_CONCURRENCY,
            tasks_in_hand=FLEET_CONCURRENCY,
            started_at=Now(),
            last_seen_at=Now(),
        )
        for i, name in enumerate(instances)
    )
    from bench.scale import NO_KEYS_NO_PARENTS, TASK_COLUMNS

    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO batchtasks_batchtask ({TASK_COLUMNS}, worker_pid, lease_expires_at) "
            "SELECT 'running', 0, '', '', 0, %(queue)s, 1, 0, '', '', '', '', "
            "'fleet@sim', false, now(), now(), NULL, %(definition)s, 0, 0, w.instance, 0, '', "
            f"'', now(), now(), NULL, {NO_KEYS_NO_PARENTS}, 1000, "
            "now() + make_interval(secs => %(lease)s) "
            "FROM unnest(%(instances)s::text[]) w(instance), generate_series(1, %(c)s)",
            {
                "queue": FLEET_QUEUE,
                "definition": definition_id,
                "instances": instances,
                "c": FLEET_CONCURRENCY,
                "lease": get_settings().LEASE_SECONDS,
            },
        )
    return instances


def forget_fleet() -> None:
    from batchtasks.models import BatchWorker

    BatchWorker.objects.filter(instance__startswith="fleet").delete()


def beat(name: str) -> None:
    """What a worker's beat asks of the database (``worker.heartbeat``, ``agent``)."""
    from batchtasks import transitions
    from batchtasks.core.conf import get_settings
    from batchtasks.services import leases, workers

    running = leases.running_on(name, using="default")
    held = [(a.task_id, a.attempt) for a in running]
    transitions.renew_leases(name, held, get_settings().LEASE_SECONDS, using="default")
    workers.worker_seen(name, in_hand=len(held), cpu=12.5, memory=200_000_000, using="default")


class Heartbeats(threading.Thread):
    """The fleet's beats at the real interval, spread evenly over it; ms of each."""

    def __init__(self, instances: list[str]) -> None:
        super().__init__(name="fleet-heartbeats", daemon=True)
        self.instances = instances
        self.times: list[float] = []
        self.late = 0  # beats that started later than their slot by a whole interval
        self._halt = threading.Event()

    def run(self) -> None:
        from django.db import connections

        from batchtasks.core.conf import get_settings

        step = get_settings().HEARTBEAT_SECONDS / len(self.instances)
        due = time.monotonic()
        try:
            for i in range(1 << 62):
                due += step
                if self._halt.wait(max(0.0, due - time.monotonic())):
                    return
                if time.monotonic() - due > step * len(self.instances):
                    self.late += 1
                start = time.perf_counter()
                beat(self.instances[i % len(self.instances)])
                self.times.append((time.perf_counter() - start) * 1000)
        finally:
            connections.close_all()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


def timed(call: Any, n: int) -> list[float]:
    """ms of each of ``n`` calls, after one warm-up."""
    call()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times


def measure() -> dict[str, list[float]]:
    """The passes of the module text (without the beat)."""
    from batchtasks.services import sweeper
    from batchtasks.services.dispatch import dispatch_queue
    from bench.scale import NOOP_QUEUE, PASSES, put_back, time_passes

    admitting, _, admitted = time_passes(NOOP_QUEUE, "fleet")
    dispatch_queue(NOOP_QUEUE, using="default")  # the window full
    full = timed(lambda: dispatch_queue(NOOP_QUEUE, using="default"), PASSES)
    put_back(NOOP_QUEUE)

    def lock() -> None:
        with sweeper.cluster_lock("default"):
            pass

    return {
        f"dispatch pass admitting a window ({admitted} tasks)": admitting,
        "dispatch pass, window full (the safety net)": full,
        "sweep, nothing to do but look": timed(
            lambda: sweeper.sweep(using="default", finalize_due=False), PASSES
        ),
        "the sweep's lock alone (another worker's attempt)": timed(lock, PASSES),
    }


def backend_cpu() -> dict[int, float]:
    """CPU seconds so far of each backend of this database (psutil: PostgreSQL runs on
    this host); this process's connections and the beats' are long-lived."""
    import psutil
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        pids = [row[0] for row in cursor.fetchall()]
    seconds = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        seconds[pid] = times.user + times.system
    return seconds


def server_ms(call: Any) -> tuple[float, float]:
    """PostgreSQL's CPU milliseconds (this database's backends) while ``call`` runs, and
    the seconds it took."""
    before, start = backend_cpu(), time.perf_counter()
    call()
    elapsed, after = time.perf_counter() - start, backend_cpu()
    return sum(t - before.get(pid, t) for pid, t in after.items()) * 1000, elapsed


def server_costs() -> dict[str, float]:
    """With the fleet beating: PostgreSQL's CPU milliseconds a second of the beats alone,
    and a pass with the window full and a sweep, each less the beats' share meanwhile."""
    from batchtasks.core.conf import get_settings
    from batchtasks.services import sweeper
    from batchtasks.services.dispatch import dispatch_queue
    from bench.scale import NOOP_QUEUE, PASSES, put_back

    window = 2 * get_settings().HEARTBEAT_SECONDS
    ms, elapsed = server_ms(lambda: time.sleep(window))
    beats = ms / elapsed  # a second
    dispatch_queue(NOOP_QUEUE, using="default")  # the window full

    def each(call: Any) -> float:
        ms, elapsed = server_ms(lambda: [call() for _ in range(PASSES)])
        return max(0.0, ms - beats * elapsed) / PASSES

    full = each(lambda: dispatch_queue(NOOP_QUEUE, using="default"))
    put_back(NOOP_QUEUE)
    sweep = each(lambda: sweeper.sweep(using="default", finalize_due=False))
    return {"beats a second": beats, "full pass": full, "sweep": sweep}


def p50_p95(values: list[float]) -> str:
    return f"{percentile(values, 50):.2f} / {percentile(values, 95):.2f} ms"


def housekeeping_ms(passes: dict[str, list[float]], beat_ms: float, workers: int) -> float:
    """Milliseconds of statements a second for the idle fleet's housekeeping: every
    worker's safety-net pass of each of its two queues, beat and sweep attempt, and one
    sweep (medians; with the settings' intervals)."""
    from batchtasks.core.conf import get_settings

    conf = get_settings()
    full, sweep, lock = (
        percentile(passes[k], 50)
        for k in (
            "dispatch pass, window full (the safety net)",
            "sweep, nothing to do but look",
            "the sweep's lock alone (another worker's attempt)",
        )
    )
    per_worker = (
        2 * full / conf.DISPATCH_INTERVAL + beat_ms / conf.HEARTBEAT_SECONDS
    ) + lock / conf.SWEEP_INTERVAL
    return workers * per_worker + sweep / conf.SWEEP_INTERVAL


def step_fleet() -> list[Row]:
    """g: the passes without and with ``FLEET_WORKERS`` workers registered and beating."""
    from batchtasks.core.conf import get_settings
    from batchtasks.models import BatchQueue, BatchTaskDefinition
    from bench.scale import (
        NOOP_QUEUE,
        PASSES,
        log,
        make_owners,
        measured_noop,
        reset,
        timed_fill,
    )

    reset()
    forget_fleet()
    noop = measured_noop()
    timed_fill(f"{BACKLOG:,} new tasks", BACKLOG, [noop.pk], owners=make_owners(1))
    log("passes without the fleet ...")
    alone = measure()
    BatchQueue.objects.get_or_create(name=FLEET_QUEUE)
    fleet_type = BatchTaskDefinition.objects.create(name=FLEET_TYPE, queue=FLEET_QUEUE)
    instances = register_fleet(fleet_type.pk, [NOOP_QUEUE, FLEET_QUEUE])
    heartbeats = Heartbeats(instances)
    heartbeats.start()
    try:
        time.sleep(get_settings().HEARTBEAT_SECONDS)  # every worker has beaten once
        log(f"passes with {FLEET_WORKERS} workers beating ...")
        crowded = measure()
        log("PostgreSQL's CPU of the beats, a pass and a sweep ...")
        server = server_costs()
    finally:
        heartbeats.stop()
    forget_fleet()
    reset()
    fleet = f"{FLEET_WORKERS} workers x {FLEET_CONCURRENCY} running, beating"
    rows = [
        (
            f"g. {name}, p50 / p95 of {PASSES}",
            f"{BACKLOG:,} new; {fleet}",
            f"none: {p50_p95(alone[name])}; fleet: {p50_p95(crowded[name])}",
        )
        for name in alone
    ]
    beat_ms = percentile(heartbeats.times, 50)
    total = housekeeping_ms(crowded, beat_ms, FLEET_WORKERS)
    conf = get_settings()
    return [
        *rows,
        (
            f"g. one worker's beat (3 statements), p50 / p95 of {len(heartbeats.times)}; "
            f"{heartbeats.late} late",
            fleet,
            p50_p95(heartbeats.times),
        ),
        (
            f"g. the idle fleet's housekeeping (safety-net passes of 2 queues every "
            f"{conf.DISPATCH_INTERVAL:g} s, beats every {conf.HEARTBEAT_SECONDS:g} s, sweep "
            f"attempts every {conf.SWEEP_INTERVAL:g} s), from the medians",
            fleet,
            f"{total:.0f} ms of statements a second",
        ),
        *server_rows(server, fleet),
    ]


def server_rows(server: dict[str, float], fleet: str) -> list[Row]:
    """The rows of PostgreSQL's CPU (``server_costs``), and the idle fleet's from them."""
    from batchtasks.core.conf import get_settings

    conf = get_settings()
    beats = server["beats a second"]
    idle = FLEET_WORKERS * 2 * server["full pass"] / conf.DISPATCH_INTERVAL
    idle += beats + server["sweep"] / conf.SWEEP_INTERVAL
    label = "g. PostgreSQL CPU (this database's backends, psutil)"
    return [
        (
            f"{label}: the beats alone, a second (one beat)",
            fleet,
            f"{beats:.1f} ms ({beats * conf.HEARTBEAT_SECONDS / FLEET_WORKERS:.2f} ms)",
        ),
        (
            f"{label}: a pass with the window full / a sweep",
            fleet,
            f"{server['full pass']:.2f} ms / {server['sweep']:.2f} ms",
        ),
        (
            f"{label}: the idle fleet's housekeeping, as above (lock attempts left out)",
            fleet,
            f"{idle:.0f} ms a second ({idle / 10:.1f} % of a core)",
        ),
    ]
