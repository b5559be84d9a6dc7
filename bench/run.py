"""``make bench``: batch tasks against plain Celery on this machine's PostgreSQL and Redis.

Runs on its own database (``<DATABASE_URL name>_bench``) and Redis key prefix, with
real worker processes, and prints a Markdown table for docs/figures/benchmarks.md.
"""

from __future__ import annotations

import gc
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.deps import bench_fanin
from bench.schedules import bench_schedules

N_SUBMIT = int(os.environ.get("BENCH_SUBMIT", "5000"))
N_THROUGHPUT = int(os.environ.get("BENCH_TASKS", "10000"))
N_PICKUP = int(os.environ.get("BENCH_PICKUP", "200"))
N_REFILL = int(os.environ.get("BENCH_REFILL", "60"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
N_ISOLATION = int(os.environ.get("BENCH_ISOLATION", "50"))
#: Tasks, one at a time, of the "submit to plugin start" row.
N_PLUGIN_START = 20
PLAIN_QUEUE = "bench.plain"


def configure() -> None:
    """Point Django at the benchmark database and Redis prefix, creating the database."""
    import psycopg

    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/batchtasks")
    base, name = url.rsplit("/", 1)
    bench_name = name.split("?")[0] + "_bench"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [bench_name])
        if exists.fetchone() is None:
            conn.execute(f'CREATE DATABASE "{bench_name}"')
    os.environ["DATABASE_URL"] = f"{base}/{bench_name}"
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    os.environ["BATCHTASKS_REDIS_PREFIX"] = "batchtasks-bench:"
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    os.environ.setdefault("DJANGO_SECRET_KEY", "benchmarks-only-not-a-secret")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # The baseline is Celery as shipped: kombu's own Redis transport.
    os.environ["CELERY_STOCK_REDIS_TRANSPORT"] = "1"

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def reset() -> None:
    """Empty the task tables and the broker queues between measurements."""
    import redis
    from django.db import connection

    from batchtasks.models import BatchTask, BatchTaskAttempt, BatchTaskParameters

    tables = [m._meta.db_table for m in (BatchTask, BatchTaskParameters, BatchTaskAttempt)]
    with connection.cursor() as cursor:  # TRUNCATE leaves no dead rows to skew timings
        cursor.execute(f"TRUNCATE {', '.join(tables)}")
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    keys = list(client.scan_iter(match=os.environ["BATCHTASKS_REDIS_PREFIX"] + "*", count=1000))
    if keys:
        client.delete(*keys)


OUR_TRANSPORT = {"CELERY_STOCK_REDIS_TRANSPORT": "0"}
STOCK_TRANSPORT = {"CELERY_STOCK_REDIS_TRANSPORT": "1"}
OUR_TRANSPORT_CLASS = "batchtasks.transport.redis:Transport"


@contextmanager
def worker(
    queues: list[str],
    concurrency: int = 2,
    env: dict[str, str] | None = None,
    name: str = "bench",
) -> Iterator[Any]:
    """A worker; batch workers use the batchtasks transport, plain ones kombu's."""
    from tests.workers import Worker

    env = env or (STOCK_TRANSPORT if queues == [PLAIN_QUEUE] else OUR_TRANSPORT)
    with tempfile.TemporaryDirectory() as log_dir:
        w = Worker(
            name,
            queues,
            concurrency=concurrency,
            log_dir=Path(log_dir),
            settings_module="project.settings",
            extra_args=["-I", "bench.tasks", "-l", "warning"],
            env={"LOG_LEVEL": "WARNING", **env},
        )
        w.start(wait=False)
        try:
            wait_until(lambda: _responds(w), 60, interval=0.2)
            yield w
        finally:
            w.stop()


def _responds(w: Any) -> bool:
    from project.celery import app

    if w.process.poll() is not None:
        raise RuntimeError(f"benchmark worker exited:\n{w.log()[-3000:]}")
    return bool(app.control.ping([w.hostname], timeout=0.5))


def all_done() -> bool:
    from batchtasks.core.states import UNFINISHED_STATES
    from batchtasks.models import BatchTask

    return not BatchTask.objects.filter(state__in=UNFINISHED_STATES).exists()


@contextmanager
def producer_transport(transport: str) -> Iterator[None]:
    """Publish from this process through another kombu transport."""
    from project.celery import app

    saved = app.conf.broker_transport

    def reset() -> None:
        app._pool = None
        app.amqp._producer_pool = None

    app.conf.broker_transport = transport
    reset()
    try:
        yield
    finally:
        app.conf.broker_transport = saved
        reset()


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> float:
    """Wait for ``predicate``; return the time it first held (``time.perf_counter``)."""
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"benchmark step did not finish within {timeout} s")
        time.sleep(interval)
    return time.perf_counter()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


DASH = "\N{EN DASH}"


def spread(values: list[float], fmt: str, unit: str) -> str:
    """The median and, with repeats, the range: ``626 tasks/s (598\N{EN DASH}640)``."""
    text = f"{format(statistics.median(values), fmt)} {unit}"
    if len(values) > 1:
        text += f" ({format(min(values), fmt)}{DASH}{format(max(values), fmt)})"
    return text


#: Many small tasks per message off (the lead's MESSAGE_BATCH_SECONDS; a no-op before it).
NO_MESSAGE_BATCH = {"BATCHTASKS_MESSAGE_BATCH_SECONDS": "0"}


@contextmanager
def bench_settings(env: dict[str, str]) -> Iterator[None]:
    """``BATCHTASKS_*`` overrides in this process too (the dispatcher side of submit)."""
    from batchtasks.core import conf

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    conf._cached = None
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        conf._cached = None


def bench_database() -> str:
    return os.environ["DATABASE_URL"].split("?")[0].rsplit("/", 1)[1]


# --- the measurements --------------------------------------------------------------------
def bench_submit() -> list[tuple[str, str, str, str]]:
    from batchtasks import BatchTask
    from bench.tasks import noop

    reset()
    BatchTask.submit("examples.noop")  # create the definition and warm the connections
    noop.apply_async(queue=PLAIN_QUEUE)
    ours, plain = [], []
    for _ in range(REPEAT):
        # Each run starts with the collector's counts at zero (timeit goes further: it
        # turns the collector off). Otherwise the 5,000 task objects each submit_many
        # returns add up across runs, and a full collection (~50 ms in this process of
        # ~100,000 objects) falls into every second or third run.
        reset()
        gc.collect()
        start = time.perf_counter()
        BatchTask.submit_many("examples.noop", [{"i": i} for i in range(N_SUBMIT)])
        ours.append(N_SUBMIT / (time.perf_counter() - start))
        reset()
        gc.collect()
        start = time.perf_counter()
        for _ in range(N_SUBMIT):
            noop.apply_async(queue=PLAIN_QUEUE)
        plain.append(N_SUBMIT / (time.perf_counter() - start))
    reset()
    a, b = statistics.median(ours), statistics.median(plain)
    return [
        (
            f"submit_many of {N_SUBMIT:,} tasks (rows + first dispatch window published); "
            f"median of {REPEAT} (min{DASH}max)",
            spread(ours, ",.0f", "tasks/s"),
            spread(plain, ",.0f", "tasks/s") + " (apply_async loop)",
            f"{a / b:.1f}x",
        )
    ]


@dataclass
class Drain:
    """One throughput run: tasks per second, and CPU seconds by group if measured."""

    rate: float
    cpu: dict[str, float] | None = None


@contextmanager
def cpu_meter(w: Any, measure: bool) -> Iterator[dict[str, float]]:
    """Measure the CPU of the block's processes (bench/cpu.py) into the yielded dict."""
    from bench.cpu import CpuMeter

    result: dict[str, float] = {}
    if not measure:
        yield result
        return
    meter = CpuMeter(w.pid, database=bench_database())
    meter.start()
    try:
        yield result
    finally:
        result.update(meter.stop())


def drain_plain(
    client: Any, worker_env: dict[str, str], cpu: bool = False, task: Any = None
) -> Drain:
    from bench.tasks import key, noop

    task = task or noop
    reset()
    with worker([PLAIN_QUEUE], env=worker_env) as w, cpu_meter(w, cpu) as used:
        start = time.perf_counter()
        for _ in range(N_THROUGHPUT):
            task.apply_async(queue=PLAIN_QUEUE)
        done = wait_until(
            lambda: int(client.get(key("done")) or 0) >= N_THROUGHPUT, timeout=600, interval=0.1
        )
    reset()
    return Drain(N_THROUGHPUT / (done - start), used or None)


def drain_ours(
    env: dict[str, str] | None = None, cpu: bool = False, type_name: str = "examples.noop"
) -> Drain:
    from batchtasks import BatchTask

    reset()
    with (
        bench_settings({k: v for k, v in (env or {}).items() if k.startswith("BATCHTASKS_")}),
        worker([f"batch.{type_name}"], env={**OUR_TRANSPORT, **(env or {})}) as w,
        cpu_meter(w, cpu) as used,
    ):
        start = time.perf_counter()
        BatchTask.submit_many(type_name, [{}] * N_THROUGHPUT)
        done = wait_until(all_done, timeout=600, interval=0.1)
    reset()
    return Drain(N_THROUGHPUT / (done - start), used or None)


#: The CPU table of the last throughput step, printed after the main table.
CPU_TABLES: list[list[str]] = []


def bench_throughput() -> list[tuple[str, str, str, str]]:
    import redis

    from bench import cpu

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    runs: dict[str, list[Drain]] = {"ours": [], "plain": [], "tuned": [], "unbatched": []}
    for i in range(REPEAT):  # interleaved, so that drifts of the machine hit all alike
        print(f"  throughput round {i + 1} of {REPEAT} ...", file=sys.stderr, flush=True)
        runs["ours"].append(drain_ours(cpu=True))
        runs["plain"].append(drain_plain(client, STOCK_TRANSPORT, cpu=True))
        with producer_transport(OUR_TRANSPORT_CLASS):
            runs["tuned"].append(drain_plain(client, OUR_TRANSPORT))
        runs["unbatched"].append(drain_ours(NO_MESSAGE_BATCH, cpu=True))
    rates = {k: [r.rate for r in v] for k, v in runs.items()}
    ours, plain, tuned, unbatched = (
        statistics.median(rates[k]) for k in ("ours", "plain", "tuned", "unbatched")
    )
    label = (
        f"end-to-end {N_THROUGHPUT:,} no-op tasks, one worker -c 2, submit to last done, "
        f"small tasks per message on (default); median of {REPEAT} (min{DASH}max)"
    )
    used: dict[str, dict[str, float]] = {}
    wall: dict[str, float] = {}  # seconds, all runs
    sides = ("ours", "unbatched", "plain")
    for k in sides:
        used[k] = {}
        for run in runs[k]:
            used[k] = cpu.add(used[k], run.cpu or {})
        wall[k] = sum(N_THROUGHPUT / r.rate for r in runs[k])
    n = N_THROUGHPUT * REPEAT
    heads = {
        "ours": "batchtasks",
        "unbatched": "batchtasks, small tasks per message off",
        "plain": "plain Celery",
    }
    table = cpu.table(
        [(heads[k], used[k], n) for k in sides],
        f"CPU per task, end-to-end {N_THROUGHPUT:,} no-op tasks (all {REPEAT} runs)",
    )
    cells = " | ".join(f"{wall[k] * 1000 / n:.3f} ms" for k in sides)
    table.append(
        f"| wall time per task (for scale: 2 cores give at most 2x this of CPU) | {cells} "
        f"| {(wall['ours'] - wall['plain']) * 1000 / n:+.3f} ms |"
    )
    CPU_TABLES.append(table)
    return [
        (
            label,
            spread(rates["ours"], ",.0f", "tasks/s"),
            spread(rates["plain"], ",.0f", "tasks/s"),
            f"{ours / plain:.2f}x",
        ),
        (
            "the same, small tasks per message off (BATCHTASKS_MESSAGE_BATCH_SECONDS=0)",
            spread(rates["unbatched"], ",.0f", "tasks/s"),
            spread(rates["plain"], ",.0f", "tasks/s"),
            f"{unbatched / plain:.2f}x",
        ),
        (
            "the same (default), plain Celery also on the batchtasks Redis transport",
            spread(rates["ours"], ",.0f", "tasks/s"),
            spread(rates["tuned"], ",.0f", "tasks/s"),
            f"{ours / tuned:.2f}x",
        ),
    ]


def bench_timed() -> list[tuple[str, str, str, str]]:
    """Timed inline tasks share messages: the worker's agent enforces their limits."""
    import redis

    from bench.tasks import TIMED_LIMIT, noop_timed

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    ours: list[float] = []
    plain: list[float] = []
    for i in range(REPEAT):  # interleaved, so that drifts of the machine hit both alike
        print(f"  timed round {i + 1} of {REPEAT} ...", file=sys.stderr, flush=True)
        ours.append(drain_ours(type_name="bench.timed").rate)
        plain.append(drain_plain(client, STOCK_TRANSPORT, task=noop_timed).rate)
    label = (
        f"end-to-end {N_THROUGHPUT:,} no-op tasks with timeout={TIMED_LIMIT} (plain Celery: "
        f"time_limit={TIMED_LIMIT}), one worker -c 2; median of {REPEAT} (min{DASH}max)"
    )
    ratio = statistics.median(ours) / statistics.median(plain)
    return [
        (label, spread(ours, ",.0f", "tasks/s"), spread(plain, ",.0f", "tasks/s"), f"{ratio:.2f}x")
    ]


def pickup_ours() -> list[float]:
    from batchtasks import BatchTask

    reset()
    # As the project runs it: batch tasks are published through its Redis transport.
    with worker(["batch.examples.sleep"]), producer_transport(OUR_TRANSPORT_CLASS):
        submitted = []
        for _ in range(N_PICKUP):
            t0 = time.time()
            task = BatchTask.submit("examples.sleep", {"seconds": 0})
            submitted.append((task.pk, t0))
            time.sleep(0.03)
        wait_until(all_done, 60)
        starts = dict(BatchTask.objects.values_list("pk", "result__start"))
    reset()
    return [(starts[pk] - t0) * 1000 for pk, t0 in submitted]


def pickup_plain() -> list[float]:
    import redis

    from bench.tasks import key, stamp

    reset()
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    with worker([PLAIN_QUEUE]):
        sent = []
        for i in range(N_PICKUP):
            t0 = time.time()
            stamp.apply_async((i,), queue=PLAIN_QUEUE)
            sent.append(t0)
            time.sleep(0.03)
        wait_until(lambda: client.exists(key(f"stamp:{N_PICKUP - 1}")), 60)
        plain = [(float(client.get(key(f"stamp:{i}"))) - t0) * 1000 for i, t0 in enumerate(sent)]
    reset()
    return plain


def checkpoint() -> None:
    """Write out what the steps before left in PostgreSQL's buffers now, so that the
    checkpoint their writes would set off (its fsyncs slow every commit down) does not
    fall into a latency measurement. Needs a superuser or the pg_checkpoint role."""
    from django.db import DatabaseError, connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("CHECKPOINT")
    except DatabaseError as exc:
        print(f"  no CHECKPOINT before the measurement: {exc}", file=sys.stderr)


def bench_pickup() -> list[tuple[str, str, str, str]]:
    p50: dict[str, list[float]] = {"ours": [], "plain": []}
    p95: dict[str, list[float]] = {"ours": [], "plain": []}
    for _ in range(REPEAT):  # interleaved
        for side, run in (("ours", pickup_ours), ("plain", pickup_plain)):
            checkpoint()
            latencies = run()
            p50[side].append(percentile(latencies, 50))
            p95[side].append(percentile(latencies, 95))
    rows = []
    for label, pcts in (
        (
            f"pickup latency p50, submit to plugin start, idle worker ({N_PICKUP} tasks); "
            f"median of {REPEAT} (min{DASH}max)",
            p50,
        ),
        ("pickup latency p95", p95),
    ):
        a, b = statistics.median(pcts["ours"]), statistics.median(pcts["plain"])
        rows.append(
            (
                label,
                spread(pcts["ours"], ".1f", "ms"),
                spread(pcts["plain"], ".1f", "ms"),
                f"{a - b:+.1f} ms",
            )
        )
    return rows


def bench_refill() -> list[tuple[str, str, str, str]]:
    from batchtasks import BatchTask
    from batchtasks.models import BatchTaskDefinition

    reset()
    BatchTask.submit("examples.sleep", {"seconds": 0})
    BatchTaskDefinition.objects.filter(name="examples.sleep").update(max_concurrency=1)
    reset()
    with worker(["batch.examples.sleep"]):
        BatchTask.submit_many("examples.sleep", [{"seconds": 0.02}] * N_REFILL)
        wait_until(all_done, 120)
    runs = sorted(BatchTask.objects.values_list("result__start", "result__end"))
    gaps = [(b[0] - a[1]) * 1000 for a, b in itertools.pairwise(runs)]
    BatchTaskDefinition.objects.filter(name="examples.sleep").update(max_concurrency=None)
    reset()
    return [
        (
            "slot refill, max_concurrency=1: plugin end to next plugin start, p50 / p95",
            f"{statistics.median(gaps):.1f} / {percentile(gaps, 95):.1f} ms",
            "n/a (no cluster-wide limits)",
            "",
        )
    ]


N_RECOVERY = int(os.environ.get("BENCH_RECOVERY", "3"))


def bench_recovery() -> list[tuple[str, str, str, str]]:
    """SIGKILL the worker running a task; time until another worker runs it again."""
    from batchtasks import BatchTask, TaskState
    from batchtasks.core.conf import get_settings

    def running_on(task_id: int, prefix: str) -> Callable[[], bool]:
        def check() -> bool:
            state, name = BatchTask.objects.values_list("state", "worker").get(pk=task_id)
            return state == TaskState.RUNNING and name.startswith(prefix)

        return check

    waits = []
    for _ in range(N_RECOVERY):
        reset()
        with worker(["batch.examples.sleep"], 1, name="victim") as victim:
            task = BatchTask.submit("examples.sleep", {"seconds": 300})
            wait_until(running_on(task.pk, "victim@"), 60)
            with worker(["batch.examples.sleep"], 1, name="rescuer"):
                start = time.perf_counter()
                victim.kill()
                done = wait_until(running_on(task.pk, "rescuer@"), 300, interval=0.05)
                waits.append(done - start)
    reset()
    conf = get_settings()
    return [
        (
            f"SIGKILL of a worker to its task running on another worker of the same machine, "
            f"median of {N_RECOVERY} (sweep every {conf.SWEEP_INTERVAL:g} s; from another "
            f"machine: the lease, {conf.LEASE_SECONDS:g} s, as well)",
            f"{statistics.median(waits):.1f} s",
            "3600 s with acks_late (Redis visibility timeout); never without",
            "",
        )
    ]


def bench_heartbeat() -> list[tuple[str, str, str, str]]:
    """Throughput with the default heartbeat against heartbeats and sweeps (nearly) off."""
    rates: dict[str, list[float]] = {"default": [], "off": []}
    quiet = {
        "BATCHTASKS_HEARTBEAT_SECONDS": "3600",
        "BATCHTASKS_LEASE_SECONDS": "7200",
        "BATCHTASKS_SWEEP_INTERVAL": "3600",
    }
    for _ in range(REPEAT):
        rates["default"].append(drain_ours().rate)
        rates["off"].append(drain_ours(quiet).rate)
    on, off = (statistics.median(rates[k]) for k in ("default", "off"))
    return [
        (
            "heartbeat cost: throughput with the default heartbeat (5 s) / with heartbeats "
            f"and sweeps off (median of {REPEAT})",
            f"{on:,.0f} / {off:,.0f} tasks/s",
            "",
            f"{on / off:.2f}x",
        )
    ]


def bench_poll() -> list[tuple[str, str, str, str]]:
    """The indicator's poll endpoint under load: bench/poll.py prints its own table. It runs
    in a process of its own because it needs a database of its own."""
    import subprocess

    subprocess.run([sys.executable, "-m", "bench.poll"], check=True)
    return []


def bench_push() -> list[tuple[str, str, str, str]]:
    """The indicator's push option (server-sent events under ASGI): bench/push.py prints
    its own table, in a process of its own like the poll's."""
    import subprocess

    subprocess.run([sys.executable, "-m", "bench.push"], check=True)
    return []


ISOLATION_MODES = [
    ("inline", "examples.noop", {}),
    ("process", "examples.process_noop", {}),
    ("executor", "examples.program", {}),
]
#: The same "process" type on a worker without templates (a fresh interpreter per attempt).
NO_TEMPLATE = {**OUR_TRANSPORT, "BATCHTASKS_ISOLATION_TEMPLATE_FORKS": "0"}


def bench_isolation() -> list[tuple[str, str, str, str]]:
    """Per-task cost of each isolation: a no-op run inline, in a child forked from the
    template, in a fresh Python child (ISOLATION_TEMPLATE_FORKS=0), and as an executor
    program (plugins/executors/demo.py), one worker -c 2."""
    reset()
    per_task: dict[str, float] = {}
    alone: dict[str, float] = {}
    queues = [f"batch.{type_name}" for _, type_name, _ in ISOLATION_MODES]
    with worker(queues):
        for mode, type_name, params in ISOLATION_MODES:
            per_task[mode], alone[mode] = _isolation_runs(type_name, params)
    with worker(["batch.examples.process_noop"], env=NO_TEMPLATE):
        mode = "process (ISOLATION_TEMPLATE_FORKS=0)"
        per_task[mode], alone[mode] = _isolation_runs("examples.process_noop", {})
    rows = []
    for mode, ms in per_task.items():
        rows.append(
            (
                f"{N_ISOLATION} no-op tasks, isolation={mode}, one worker -c 2: wall time per task",
                f"{ms:,.1f} ms",
                "—",
                f"{ms / per_task['inline']:.1f}x inline",
            )
        )
        rows.append(
            (
                f"one no-op task on an idle worker, isolation={mode}: submit to done (median of 5)",
                f"{alone[mode]:,.1f} ms",
                "—",
                f"{alone[mode] / alone['inline']:.1f}x inline",
            )
        )
    return rows + _plugin_start()


def _isolation_runs(type_name: str, params: dict[str, Any]) -> tuple[float, float]:
    """Wall time per task of ``N_ISOLATION`` tasks, and the median submit to done alone."""
    from batchtasks import BatchTask

    # Create the definition, and warm both pool processes (their templates set up).
    BatchTask.submit_many(type_name, [params] * 4)
    wait_until(all_done, timeout=120)
    start = time.perf_counter()
    BatchTask.submit_many(type_name, [params] * N_ISOLATION)
    done = wait_until(all_done, timeout=600, interval=0.02)
    per_task = (done - start) * 1000 / N_ISOLATION
    alone = _one_at_a_time(type_name, params)
    reset()
    return per_task, alone


def _plugin_start() -> list[tuple[str, str, str, str]]:
    """Submit to the start of the plugin (its own clock, ``time.time()``), isolation
    "process", one task at a time on an idle worker -c 2 whose template is up."""
    from batchtasks import BatchTask

    reset()
    delays = []
    with worker(["batch.examples.process_noop"]):
        BatchTask.submit_many("examples.process_noop", [{}] * 4)  # the templates set up
        wait_until(all_done, timeout=120)
        for _ in range(N_PLUGIN_START):
            time.sleep(0.3)  # idle: the last child is gone, the worker waits
            start = time.time()
            task = BatchTask.submit("examples.process_noop", {"stamp": True})
            wait_until(all_done, timeout=60, interval=0.002)
            task.refresh_from_db()
            delays.append((task.result - start) * 1000)
    reset()
    return [
        (
            f"one no-op task on an idle worker, isolation=process: submit to plugin start "
            f"(p50 of {N_PLUGIN_START})",
            f"{statistics.median(delays):,.1f} ms",
            "—",
            f"p90 {percentile(delays, 90):,.1f} ms",
        )
    ]


def _one_at_a_time(type_name: str, params: dict[str, Any]) -> float:
    from batchtasks import BatchTask

    times = []
    for _ in range(5):
        time.sleep(1.5)  # an idle worker (without a template, a spare child set up by now)
        start = time.perf_counter()
        BatchTask.submit(type_name, params)
        times.append((wait_until(all_done, timeout=60, interval=0.002) - start) * 1000)
    return statistics.median(times)


def main() -> None:
    configure()
    from bench.aging import bench_aging
    from bench.ratelimits import bench_ratelimits

    steps = {
        "submit": bench_submit,
        "throughput": bench_throughput,
        "timed": bench_timed,
        "pickup": bench_pickup,
        "refill": bench_refill,
        "recovery": bench_recovery,
        "heartbeat": bench_heartbeat,
        "poll": bench_poll,
        "push": bench_push,
        "isolation": bench_isolation,
        "schedules": bench_schedules,
        "ratelimits": bench_ratelimits,
        "fanin": bench_fanin,
        "aging": bench_aging,
    }
    chosen = sys.argv[1:] or list(steps)
    rows: list[tuple[str, str, str, str]] = []
    try:
        for name in chosen:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rows += steps[name]()
    finally:  # a step that fails still leaves the figures of those before it
        print_tables(rows)


def print_tables(rows: list[tuple[str, str, str, str]]) -> None:
    if not rows:
        return
    print("\n| measurement | batchtasks | plain Celery | ratio |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for table in CPU_TABLES:
        print("\n".join(table))


if __name__ == "__main__":
    main()
