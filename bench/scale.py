"""``make bench-scale``: how the cost of dispatching, submitting, running and purging grows
with the work already in the table.

Command (repository root; ``python -m bench.scale [step ...]`` runs some steps only):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/batchtasks \
        REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python -m bench.scale

Runs on a database of its own, ``<DATABASE_URL name>_scale`` (created if missing and
kept, emptied before each step), and the Redis prefix ``batchtasks-scale:``
(``SCALE_PREFIX``). Rows are filled with set-based SQL (``INSERT … SELECT …
generate_series``), tasks with their parameters (and finished ones with their attempt),
then ``VACUUM ANALYZE`` (the state autovacuum would leave). Steps (all by default):

- ``backlog``: a dispatch pass (median / p95 of ``SCALE_PASSES``) and ``BatchTask.submit``
  (p50 / p99 of ``SCALE_SUBMITS``) with ``SCALE_SIZES`` waiting tasks of one type and owner.
- ``owners``: the same with the largest size spread over ``SCALE_OWNERS`` owners.
- ``queues``: a pass of each of 10 queues shared by 100 types, the largest size spread.
- ``throughput``: ``SCALE_TASKS`` no-op tasks end to end on one worker -c 2, on an empty
  table and with ``SCALE_FINISHED`` finished tasks in it (median of ``SCALE_REPEAT``).
- ``purge``: the sweeper's ``purge`` called in another process until ``SCALE_FINISHED``
  expired tasks are gone, with submits going on here; submit latency with and without.
- ``rss``: the worker's resident memory before and after ``SCALE_RSS_TASKS`` no-op tasks.
- ``fleet``: a dispatch pass, a sweep and a heartbeat with ``FLEET_WORKERS`` (50) workers
  registered and beating, simulated (bench/fleet.py), against none.

``SCALE_EXPLAIN=1`` prints the plans (EXPLAIN ANALYZE, rolled back) of the statements of
one pass and one submit at each size to stderr. Progress goes to stderr, the Markdown
table to stdout.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.fleet import step_fleet
from bench.run import percentile, wait_until

SIZES = [int(s) for s in os.environ.get("SCALE_SIZES", "1000,100000,1000000").split(",")]
PASSES = int(os.environ.get("SCALE_PASSES", "20"))
SUBMITS = int(os.environ.get("SCALE_SUBMITS", "200"))
OWNERS = int(os.environ.get("SCALE_OWNERS", "10000"))
SPREAD = int(os.environ.get("SCALE_SPREAD", str(max(SIZES))))  # rows of owners / queues
TASKS = int(os.environ.get("SCALE_TASKS", "10000"))
FINISHED = int(os.environ.get("SCALE_FINISHED", str(max(SIZES))))
RSS_TASKS = int(os.environ.get("SCALE_RSS_TASKS", "100000"))
REPEAT = int(os.environ.get("SCALE_REPEAT", "3"))
EXPLAIN = os.environ.get("SCALE_EXPLAIN") == "1"
TYPES, QUEUES = 100, 10
NOOP = "examples.noop"
NOOP_QUEUE = "batch.examples.noop"
PREFIX = os.environ.get("SCALE_PREFIX", "batchtasks-scale:")
Row = tuple[str, str, str]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def configure() -> None:
    """Point Django at ``<name>_scale`` (created if missing) and migrate."""
    import psycopg

    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/batchtasks")
    base, name = url.split("?")[0].rsplit("/", 1)
    scale_name = name + "_scale"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [scale_name])
        if exists.fetchone() is None:
            conn.execute(f'CREATE DATABASE "{scale_name}"')
    os.environ["DATABASE_URL"] = f"{base}/{scale_name}"
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    os.environ["BATCHTASKS_REDIS_PREFIX"] = PREFIX
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    os.environ.setdefault("DJANGO_SECRET_KEY", "benchmarks-only-not-a-secret")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["CELERY_STOCK_REDIS_TRANSPORT"] = "0"  # the batchtasks transport everywhere

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def clear_redis() -> None:
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    keys = list(client.scan_iter(match=PREFIX + "*", count=1000))
    if keys:
        client.delete(*keys)


def truncate_tasks() -> None:
    from django.db import connection

    with connection.cursor() as cursor:  # TRUNCATE leaves no dead rows to skew timings
        cursor.execute(
            "TRUNCATE batchtasks_batchtaskattempt, batchtasks_batchtaskparameters, "
            "batchtasks_batchtask"
        )


def reset() -> None:
    """No tasks, no users or types of ours, default settings of the noop type, empty Redis."""
    from django.db import connection

    from batchtasks.models import BatchQueue, BatchTaskDefinition

    truncate_tasks()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM auth_user WHERE username LIKE %s", ["scale-%"])
    BatchTaskDefinition.objects.filter(name__startswith="scale.").delete()
    BatchQueue.objects.filter(name__startswith="batch.scale.").delete()
    BatchTaskDefinition.objects.filter(name=NOOP).update(retention=None, max_concurrency=None)
    clear_redis()


def vacuum() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")


def noop_definition() -> Any:
    from batchtasks.services.definitions import get_definition

    return get_definition(NOOP, using="default")


#: The run time the dispatch steps' types are given, as if measured: a pass then
#: publishes its window as messages of 50 tasks whatever ran on the database before.
#: Unmeasured, a pass publishes 500 messages, which took most of its time.
RUN_SECONDS = 0.001


def measured_noop() -> Any:
    definition = noop_definition()
    definition.run_seconds = RUN_SECONDS
    definition.save(update_fields=["run_seconds"])
    return definition


# --- filling ----------------------------------------------------------------------
TASK_COLUMNS = (
    "state, priority, description, fairness_key, fair_round, queue, attempt, "
    "progress_percent, progress_message, error_type, error_message, error_traceback, "
    "worker, cancel_requested, created_at, updated_at, owner_id, definition_id, lost_runs, "
    "republish_count, worker_instance, finalize_attempts, finalize_error, finalize_state, "
    "queued_at, started_at, finished_at, concurrency_key, rate_key, child_count, "
    "on_parent_failure, pending_parents"
)
#: The values of the last five columns (no per-key rules, no dependencies).
NO_KEYS_NO_PARENTS = "'', '', 0, 'skip', 0"


def make_owners(n: int) -> list[int]:
    """``n`` users (``scale-<i>``); their ids in order."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, "
            "email, is_staff, is_active, date_joined) "
            "SELECT '!', false, 'scale-' || g, '', '', '', false, true, now() "
            "FROM generate_series(1, %s) g RETURNING id",
            [n],
        )
        return sorted(row[0] for row in cursor.fetchall())


def fill(
    n: int,
    definitions: list[int],
    *,
    owners: list[int] | None = None,
    finished: bool = False,
    finished_days_ago: tuple[float, float] = (0.1, 1.0),
) -> None:
    """``n`` tasks, row ``g`` of type ``definitions[g % len]``: waiting (``new``) or
    finished (``succeeded`` ``finished_days_ago`` days ago, with an attempt row).

    Waiting rows get the fair turns a steady stream of submits gives them: the owner
    of row ``g`` is ``owners[g % len]`` (its key ``user:<id>``); a key's tasks of a type
    take consecutive turns, all keys from the same first turn, so the line interleaves
    them (start-time fair queueing, as ``services.submit._load`` assigns turns).
    """
    from django.db import connection, transaction

    from batchtasks.core.codecs import encode

    owners = owners or []
    k, m = len(definitions), max(len(owners), 1)
    # The i-th task of a (type, key) pair: its turn.
    turn = f"g / ({k} * {m})"
    if finished:
        state, queue, worker = "'succeeded'", f"'{NOOP_QUEUE}'", "'celery@scale'"
        ago = (
            f"now() - make_interval(secs => 86400 * ({finished_days_ago[0]} + "
            f"{finished_days_ago[1] - finished_days_ago[0]} * g::float8 / {max(n, 1)}))"
        )
        times = f"{ago} - interval '2 s', {ago} - interval '1 s', {ago}"
        created = f"{ago} - interval '3 s'"
    else:
        state, queue, worker = "'new'", "''", "''"
        times, created = "NULL, NULL, NULL", "now()"
    sql = (
        f"INSERT INTO batchtasks_batchtask ({TASK_COLUMNS}) "
        f"SELECT {state}, 0, '', COALESCE('user:' || o.id, ''), {turn}, {queue}, 1, 0, '', "
        f"'', '', '', {worker}, false, {created}, {created}, o.id, d.id, 0, 0, '', 0, '', '', "
        f"{times}, {NO_KEYS_NO_PARENTS} FROM generate_series(0, %(n)s - 1) g "
        # Joins, not array subscripts: a parameter array is parsed again on every row.
        "JOIN unnest(%(definitions)s::bigint[]) WITH ORDINALITY d(id, i) "
        f"ON d.i = mod(g, {k}) + 1 "
        "LEFT JOIN unnest(%(owners)s::int[]) WITH ORDINALITY o(id, i) "
        f"ON o.i = mod(g, {m}) + 1 ORDER BY g"
    )
    encoded = encode({}, type_name=NOOP, limit=1024)
    # One transaction: a fill that fails leaves the indexes as they were.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT COALESCE(MAX(id), 0) FROM batchtasks_batchtask")
        start = cursor.fetchone()[0]
        indexes = _drop_indexes(cursor) if start == 0 else []
        # No foreign-key checks (the rows point at what exists): with 10,000 owners a
        # million deferred checks take minutes.
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(sql, {"n": n, "definitions": definitions, "owners": owners})
        cursor.execute("SET LOCAL maintenance_work_mem = '256MB'")
        for definition in indexes:
            cursor.execute(definition)
        cursor.execute("SET LOCAL session_replication_role = origin")
        cursor.execute(
            "INSERT INTO batchtasks_batchtaskparameters (task_id, data, codec, size) "
            "SELECT id, %s, %s, %s FROM batchtasks_batchtask WHERE id > %s",
            [encoded.data, encoded.codec, len(encoded.data), start],
        )
        if finished:
            cursor.execute(
                "INSERT INTO batchtasks_batchtaskattempt (task_id, number, worker, started_at, "
                "finished_at, outcome, error_type, error_message) SELECT id, 1, worker, "
                "started_at, finished_at, 'succeeded', '', '' FROM batchtasks_batchtask "
                "WHERE id > %s",
                [start],
            )
    vacuum()


def _drop_indexes(cursor: Any) -> list[str]:
    """Drop the task table's secondary indexes; return the statements that create them
    again. Built after the fill rather than row by row: with a few thousand owners the
    random inserts into the owner and fair-turn indexes churn PostgreSQL's small buffer
    pool and take minutes instead of seconds."""
    cursor.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'batchtasks_batchtask' "
        "AND indexname NOT IN (SELECT conname FROM pg_constraint "
        "WHERE conrelid = 'batchtasks_batchtask'::regclass)"
    )
    found = cursor.fetchall()
    for name, _ in found:
        cursor.execute(f'DROP INDEX "{name}"')
    return [definition for _, definition in found]


def timed_fill(what: str, n: int, definitions: list[int], **options: Any) -> None:
    """``fill``, logged with its time."""
    log(f"filling {what} ...")
    start = time.perf_counter()
    fill(n, definitions, **options)
    log(f"filled {what} in {time.perf_counter() - start:.1f} s")


# --- measuring --------------------------------------------------------------------
class QueryTimer:
    """``connection.execute_wrapper`` keeping each statement's SQL, params and time."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, float]] = []

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.calls.append((sql, params, (time.perf_counter() - start) * 1000))


def statement_report(label: str, calls: list[tuple[str, Any, float]]) -> None:
    """Median ms of each statement (by its SQL) to stderr: what grows shows here."""
    by_sql: dict[str, list[float]] = defaultdict(list)
    for sql, _, ms in calls:
        by_sql[" ".join(sql.split())].append(ms)
    log(f"statements of {label} (median ms, count, sql):")
    for sql, times in sorted(by_sql.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"    {statistics.median(times):8.2f} {len(times):5d}  {sql[:150]}", file=sys.stderr)


def explain(label: str, calls: list[tuple[str, Any, float]]) -> None:
    """EXPLAIN ANALYZE each distinct statement touching the task table, rolled back."""
    from django.db import connection, transaction

    seen: set[str] = set()
    for sql, params, _ in calls:
        head = sql.lstrip().split(None, 1)[0].upper()
        if sql in seen or "batchtasks_batchtask" not in sql or head == "EXPLAIN":
            continue
        if head not in ("SELECT", "WITH", "UPDATE", "DELETE", "INSERT"):
            continue
        seen.add(sql)
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
                plan = "\n".join("      " + row[0] for row in cursor.fetchall())
            transaction.set_rollback(True)
        print(f"--- plan ({label}): {' '.join(sql.split())[:200]}\n{plan}", file=sys.stderr)


def put_back(queue: str) -> None:
    """Admitted tasks back to ``new`` (as a failed publish does), their messages dropped:
    the backlog is the same size for the next pass."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE batchtasks_batchtask SET state = 'new', queue = '', queued_at = NULL "
            "WHERE queue = %s AND state IN ('queued', 'running')",
            [queue],
        )
    clear_redis()


def time_passes(queue: str, label: str) -> tuple[list[float], list[float], int]:
    """``PASSES`` dispatch passes of ``queue`` from an empty window (after one warm-up);
    each admitted batch is put back. Returns the ms of each, the ms of its SQL, and how
    many tasks a pass admitted."""
    from django.db import connection

    from batchtasks.services.dispatch import dispatch_queue

    times, sql_times, admitted = [], [], 0
    calls: list[tuple[str, Any, float]] = []
    for i in range(PASSES + 1):
        timer = QueryTimer()
        start = time.perf_counter()
        with connection.execute_wrapper(timer):
            admitted = dispatch_queue(queue, using="default")
        elapsed = (time.perf_counter() - start) * 1000
        put_back(queue)
        if i:  # the first is a warm-up
            times.append(elapsed)
            sql_times.append(sum(ms for *_, ms in timer.calls))
            calls += timer.calls
    statement_report(f"dispatch pass, {label}", calls)
    if EXPLAIN:
        explain(label, timer.calls)
        put_back(queue)
    return times, sql_times, admitted


def time_submits(
    owners: list[int] | None, label: str, n: int = SUBMITS, *, report: bool = True
) -> list[float]:
    """``n`` ``BatchTask.submit`` calls (each runs its dispatch pass after commit) with the
    window already full, as it is while a backlog waits; ms of each."""
    from django.contrib.auth.models import User
    from django.db import connection

    from batchtasks import BatchTask
    from batchtasks.services.dispatch import dispatch_queue

    dispatch_queue(NOOP_QUEUE, using="default")  # fill the window
    times = []
    timer = QueryTimer()
    for i in range(n + 1):
        owner = User(pk=owners[(i * 7919) % len(owners)]) if owners else None
        start = time.perf_counter()
        with connection.execute_wrapper(timer):
            BatchTask.submit(NOOP, {}, owner=owner)
        if i:
            times.append((time.perf_counter() - start) * 1000)
        else:
            timer.calls.clear()
    if report:
        statement_report(f"submit, {label}", timer.calls)
        if EXPLAIN:
            explain(f"submit, {label}", timer.calls[-8:])
    put_back(NOOP_QUEUE)
    return times


def ms(values: list[float], a: int, b: int) -> str:
    return f"{percentile(values, a):.1f} / {percentile(values, b):.1f} ms"


def pass_result(times: list[float], sql_times: list[float]) -> str:
    return f"{ms(times, 50, 95)} (SQL p50 {percentile(sql_times, 50):.1f} ms)"


# --- the steps --------------------------------------------------------------------
def step_backlog() -> list[Row]:
    """a: one type, one owner, ``SIZES`` waiting tasks."""
    rows: list[Row] = []
    for size in SIZES:
        reset()
        definition = measured_noop()
        owners = make_owners(1)
        timed_fill(f"{size:,} new tasks", size, [definition.pk], owners=owners)
        passes, sql, admitted = time_passes(NOOP_QUEUE, f"{size:,} new")
        submits = time_submits(owners, f"{size:,} new")
        work = f"{size:,} new, 1 type, 1 owner"
        rows.append(
            (
                f"a. dispatch pass (admits {admitted}), p50 / p95 of {PASSES}",
                work,
                pass_result(passes, sql),
            )
        )
        rows.append((f"a. submit, window full, p50 / p99 of {SUBMITS}", work, ms(submits, 50, 99)))
    reset()
    return rows


def step_owners() -> list[Row]:
    """b: the largest backlog spread over ``OWNERS`` owners."""
    reset()
    definition = measured_noop()
    owners = make_owners(OWNERS)
    label = f"{SPREAD:,} new, 1 type, {OWNERS:,} owners"
    timed_fill(label, SPREAD, [definition.pk], owners=owners)
    passes, sql, admitted = time_passes(NOOP_QUEUE, label)
    submits = time_submits(owners, label)
    reset()
    return [
        (
            f"b. dispatch pass (admits {admitted}), p50 / p95 of {PASSES}",
            label,
            pass_result(passes, sql),
        ),
        (f"b. submit (rotating owners), p50 / p99 of {SUBMITS}", label, ms(submits, 50, 99)),
    ]


def step_queues() -> list[Row]:
    """c: 100 types in 10 queues (10 a queue), the largest backlog spread over them."""
    from batchtasks.models import BatchQueue, BatchTaskDefinition

    reset()
    BatchQueue.objects.bulk_create(BatchQueue(name=f"batch.scale.q{q}") for q in range(QUEUES))
    definitions = BatchTaskDefinition.objects.bulk_create(
        BatchTaskDefinition(
            name=f"scale.t{i:03d}", queue=f"batch.scale.q{i % QUEUES}", run_seconds=RUN_SECONDS
        )
        for i in range(TYPES)
    )
    label = f"{SPREAD:,} new, {TYPES} types in {QUEUES} queues"
    medians, p95s, sql_medians, admitted = [], [], [], 0
    timed_fill(label, SPREAD, [d.pk for d in definitions])
    for q in range(QUEUES):
        times, sql, admitted = time_passes(f"batch.scale.q{q}", f"{label}, queue {q}")
        medians.append(percentile(times, 50))
        p95s.append(percentile(times, 95))
        sql_medians.append(percentile(sql, 50))
    reset()
    return [
        (
            f"c. dispatch pass of one queue of 10 types (admits {admitted}): median over "
            f"queues of p50 / worst queue's p95 ({PASSES} passes each)",
            label,
            f"{statistics.median(medians):.1f} / {max(p95s):.1f} ms "
            f"(p50 range {min(medians):.1f}-{max(medians):.1f}; "
            f"SQL p50 {statistics.median(sql_medians):.1f} ms)",
        )
    ]


@contextmanager
def noop_worker() -> Iterator[Any]:
    from bench.run import OUR_TRANSPORT, worker

    with worker([NOOP_QUEUE], env=OUR_TRANSPORT, name="scale") as w:
        yield w


def noop_done() -> bool:
    """Nothing of the noop type waits or is in flight (index-served: cheap on a big table)."""
    from batchtasks.models import BatchTask

    waiting = BatchTask.objects.filter(definition__name=NOOP, state="new")
    in_flight = BatchTask.objects.filter(queue=NOOP_QUEUE, state__in=["queued", "running"])
    return not waiting.exists() and not in_flight.exists()


def drain(n: int) -> float:
    """Submit ``n`` no-op tasks at once (``submit_many``) and wait for the last; tasks/s."""
    from batchtasks import BatchTask

    start = time.perf_counter()
    BatchTask.submit_many(NOOP, [{}] * n)
    done = wait_until(noop_done, timeout=1800, interval=0.1)
    return n / (done - start)


def step_throughput() -> list[Row]:
    """d: end-to-end throughput on an empty table and with ``FINISHED`` finished tasks,
    ``REPEAT`` drains each (medians; the machine is noisy)."""
    rates: dict[int, list[float]] = {}
    for finished in (0, FINISHED):
        reset()
        pk = noop_definition().pk
        if finished:
            timed_fill(f"{finished:,} finished tasks", finished, [pk], finished=True)
        with noop_worker():
            drain(100)  # warm the worker
            for _ in range(REPEAT):
                log(f"draining {TASKS:,} no-op tasks, {finished:,} finished in the table ...")
                rates.setdefault(finished, []).append(drain(TASKS))
                if not finished:  # empty again (Redis left alone: the worker's bindings)
                    truncate_tasks()
                log(f"  {rates[finished][-1]:,.0f} tasks/s")
    reset()
    empty, full = (statistics.median(rates[k]) for k in (0, FINISHED))
    label = (
        f"d. end to end, {TASKS:,} no-op tasks, one worker -c 2, submit_many to last done "
        f"(median of {REPEAT})"
    )

    def each(k: int) -> str:
        return ", ".join(f"{r:,.0f}" for r in rates[k])

    return [
        (label, "empty table", f"{empty:,.0f} tasks/s (runs: {each(0)})"),
        (
            label,
            f"{FINISHED:,} finished (same type)",
            f"{full:,.0f} tasks/s, {full / empty:.2f}x (runs: {each(FINISHED)})",
        ),
    ]


def step_purge() -> list[Row]:
    """e: the sweeper's ``purge`` until ``FINISHED`` expired tasks are gone, in another
    process, while this one keeps submitting; submit latency with and without it."""
    from django.db import connection

    from batchtasks.core.conf import get_settings
    from batchtasks.models import BatchTaskDefinition

    reset()
    definition = noop_definition()
    timed_fill(
        f"{FINISHED:,} finished tasks, 2 to 32 days old",
        FINISHED,
        [definition.pk],
        finished=True,
        finished_days_ago=(2, 32),
    )
    BatchTaskDefinition.objects.filter(pk=definition.pk).update(retention=86400)
    log(f"submits without a purge ({SUBMITS}) ...")
    quiet = time_submits(None, f"{FINISHED:,} finished, no purge")
    log("purging (another process) while submitting ...")
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.scale", PURGE_CHILD], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    child.stdout.readline()  # set up: its first call begins now
    during: list[float] = []
    while child.poll() is None:
        during += time_submits(None, "during the purge", n=10, report=False)
    out, _ = child.communicate()
    if child.returncode:
        raise RuntimeError(f"the purge process failed ({child.returncode})")
    calls = json.loads(out.splitlines()[-1])
    deleted = sum(n for n, _ in calls)
    duration = sum(call_ms for _, call_ms in calls) / 1000  # the calls' time only
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM batchtasks_batchtask WHERE state = 'succeeded'")
        left = cursor.fetchone()[0]
    reset()
    conf = get_settings()
    most = max(n for n, _ in calls)  # a full call: what one sweep deletes at most
    work = f"{FINISHED:,} finished, expired"
    return [
        (
            f"e. purge (the sweeper's purge() called until nothing is left, in another "
            f"process; PURGE_SECONDS {conf.PURGE_SECONDS:g})",
            work,
            f"{duration:.1f} s, {deleted / duration:,.0f} rows/s ({left:,} left); "
            f"{len(calls)} calls of up to {most:,} rows, median "
            f"{statistics.median(call_ms for _, call_ms in calls):.0f} ms",
        ),
        (
            f"e. purge a sweep can keep up with (the most one call deleted / SWEEP_INTERVAL "
            f"{conf.SWEEP_INTERVAL:g} s)",
            work,
            f"{most / conf.SWEEP_INTERVAL:,.0f} rows/s",
        ),
        (f"e. submit p50 / p99, no purge ({len(quiet)})", work, ms(quiet, 50, 99)),
        (f"e. submit p50 / p99, during the purge ({len(during)})", work, ms(during, 50, 99)),
    ]


PURGE_CHILD = "_purge"


def purge_child() -> None:
    """The purge of step e, in a process of its own (no GIL shared with the submits):
    ``purge()`` until it deletes nothing; prints a line when set up, then
    ``[[rows, ms], …]`` of each call that deleted something."""
    import django

    django.setup()  # the parent's environment: the scale database and prefix
    from django.db import connection

    from batchtasks.services.sweeper import purge

    connection.ensure_connection()
    print("ready", flush=True)
    calls, deleted = [], 0
    while True:
        start = time.perf_counter()
        n = purge(using="default")
        if not n:
            break
        calls.append((n, (time.perf_counter() - start) * 1000))
        if deleted // 100_000 < (deleted + n) // 100_000:
            log(f"  purged {deleted + n:,} rows")
        deleted += n
    print(json.dumps(calls))


def rss(pid: int) -> tuple[float, list[float]]:
    """MB resident: the worker's main process and each of its pool processes."""
    import psutil

    parent = psutil.Process(pid)
    children = parent.children(recursive=True)
    mb = 1024 * 1024
    return parent.memory_info().rss / mb, sorted(c.memory_info().rss / mb for c in children)


def step_rss() -> list[Row]:
    """f: worker RSS after 0 (warm), 10 %, 50 % and 100 % of ``RSS_TASKS`` no-op tasks."""
    reset()
    noop_definition()
    checkpoints = sorted({RSS_TASKS // 10, RSS_TASKS // 2, RSS_TASKS})
    seen: list[tuple[int, float, list[float]]] = []
    done = 0
    with noop_worker() as w:
        drain(200)
        seen.append((0, *rss(w.pid)))
        for point in checkpoints:
            while done < point:
                batch = min(10000, point - done)
                drain(batch)
                done += batch
            seen.append((done, *rss(w.pid)))
            log(f"  after {done:,} tasks: parent {seen[-1][1]:.1f} MB, pool {seen[-1][2]}")
    reset()
    rows = []
    base_parent, base_pool = seen[0][1], sum(seen[0][2])
    for n, parent, pool in seen:
        pool_text = " + ".join(f"{p:.1f}" for p in pool)
        rows.append(
            (
                "f. worker RSS: parent / pool processes (growth since warm-up)",
                f"after {n:,} no-op tasks",
                f"{parent:.1f} MB / {pool_text} MB "
                f"({parent - base_parent:+.1f} / {sum(pool) - base_pool:+.1f} MB)",
            )
        )
    return rows


STEPS: dict[str, Callable[[], list[Row]]] = {
    "backlog": step_backlog,
    "owners": step_owners,
    "queues": step_queues,
    "throughput": step_throughput,
    "purge": step_purge,
    "rss": step_rss,
    "fleet": step_fleet,
}


def main() -> None:
    if sys.argv[1:] == [PURGE_CHILD]:
        purge_child()
        return
    chosen = sys.argv[1:] or list(STEPS)
    unknown = [name for name in chosen if name not in STEPS]
    if unknown:
        sys.exit(f"unknown step(s) {unknown}; choose from {list(STEPS)}")
    configure()
    began = time.perf_counter()
    rows: list[Row] = []
    for name in chosen:
        log(f"running {name} ...")
        rows += STEPS[name]()
    print("\n| measurement | work in the table | result |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\n(steps {', '.join(chosen)}: {time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
