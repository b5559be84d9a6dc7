"""The cost of a Prometheus scrape, GET /batchtasks/metrics/, on a million task rows.

Command (repository root):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/batchtasks \
        REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python -m bench.metrics_scrape

Fills a scratch database (``<DATABASE_URL name>_metrics_<pid>``, dropped at the end) by
COPY with ``BENCH_METRICS_TASKS`` tasks (default 1,000,000) of 50 types in 10 queues:
most finished over 30 days (one attempt row each, a few two), ``BENCH_METRICS_HOUR``
(default 20,000) of them in the last hour, 20,000 waiting (a tenth delayed), 2,000
queued and 1,000 running. Then scrapes the endpoint ``BENCH_METRICS_SCRAPES`` times
(default 20) in this process as a staff user, timing the wall clock and each SQL
statement, and EXPLAINs every statement of one scrape. ``BENCH_METRICS_KEEP=1`` keeps
the database for a closer look.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from bench.poll import configure
from bench.run import percentile
from bench.scratch import scratch_database

TASKS = int(os.environ.get("BENCH_METRICS_TASKS", "1000000"))
HOUR = int(os.environ.get("BENCH_METRICS_HOUR", "20000"))
SCRAPES = int(os.environ.get("BENCH_METRICS_SCRAPES", "20"))
KEEP = os.environ.get("BENCH_METRICS_KEEP") == "1"  # to EXPLAIN more by hand afterwards
TYPES, QUEUES = 50, 10
UNFINISHED = {"new": 20000, "queued": 2000, "running": 1000}
FINAL = ["succeeded", "failed", "cancelled", "skipped"]
TASK_COLUMNS = (
    "id, definition_id, queue, state, priority, description, fairness_key, fair_round, "
    "attempt, progress_percent, progress_message, error_type, error_message, "
    "error_traceback, worker, worker_instance, cancel_requested, lost_runs, "
    "republish_count, created_at, updated_at, finalize_state, finalize_attempts, "
    "finalize_error, run_after, queued_at, started_at, finished_at, lease_expires_at"
)
ATTEMPT_COLUMNS = (
    "task_id, number, worker, started_at, finished_at, outcome, error_type, error_message"
)


def make_types() -> list[Any]:
    """50 definitions in 10 queues; every fifth type and every other queue is limited."""
    from batchtasks.models import BatchQueue, BatchTaskDefinition

    BatchQueue.objects.bulk_create(
        BatchQueue(name=f"batch.bench.q{q}", max_concurrency=50 if q % 2 else None)
        for q in range(QUEUES)
    )
    return BatchTaskDefinition.objects.bulk_create(
        BatchTaskDefinition(
            name=f"bench.type{i:02d}",
            queue=f"batch.bench.q{i % QUEUES}",
            max_concurrency=20 if i % 5 == 0 else None,
        )
        for i in range(TYPES)
    )


def kinds() -> Iterator[str]:
    """The kind of each task: an unfinished state, "hour" or "old" (finished)."""
    for state, n in UNFINISHED.items():
        yield from [state] * n
    yield from ["hour"] * HOUR
    yield from ["old"] * (TASKS - HOUR - sum(UNFINISHED.values()))


def task_row(pk: int, kind: str, definition: Any, now: datetime, rng: random.Random) -> tuple:
    """The COPY row of one task: ``kind`` is an unfinished state, "hour" or "old"."""
    state, attempt = kind, 2 if rng.random() < 0.05 else 1
    run_after = now + timedelta(minutes=5) if kind == "new" and pk % 10 == 0 else None
    created = now - timedelta(seconds=rng.random() * 600)
    queued = started = finished = lease = None
    if kind in ("hour", "old"):
        state = rng.choices(FINAL, [90, 7, 2, 1])[0]
        ago = rng.random() * 3500 if kind == "hour" else 3700 + rng.random() * 30 * 86400
        finished = now - timedelta(seconds=ago)
        created = finished - timedelta(seconds=5 + rng.random() * 300)
        queued, started = created, finished - timedelta(seconds=rng.random() * 120)
    elif kind in ("queued", "running"):
        queued = created + timedelta(seconds=1)
        if kind == "running":
            started, lease = queued, now + timedelta(seconds=30)
    return (
        pk, definition.pk, definition.queue, state, 0, "bench", "", 0, attempt, 0, "", "",
        "", "", "celery@bench" if started else "", "", False, 0, 0, created,
        finished or created, "", 0, "", run_after, queued, started, finished, lease,
    )  # fmt: skip


# Each finished task's last attempt (skipped ones never ran), and the failed first attempt
# of every task on its second: as the runner writes them.
ATTEMPTS_SQL = f"""
INSERT INTO batchtasks_batchtaskattempt ({ATTEMPT_COLUMNS})
SELECT id, attempt, worker, started_at, finished_at,
       CASE state WHEN 'succeeded' THEN 'succeeded' WHEN 'cancelled' THEN 'cancelled'
                  ELSE 'failed' END, '', ''
FROM batchtasks_batchtask WHERE finished_at IS NOT NULL AND state <> 'skipped'
UNION ALL
SELECT id, 1, 'celery@bench', created_at, COALESCE(started_at, created_at) - interval '3 s',
       'failed', 'ConnectionError', 'the far end did not answer'
FROM batchtasks_batchtask WHERE attempt = 2
"""


def fill() -> None:
    """COPY the tasks, add their attempts, then VACUUM ANALYZE (as autovacuum would)."""
    from django.db import connection

    definitions, rng = make_types(), random.Random(11)
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        now = cursor.fetchone()[0]
        with cursor.copy(f"COPY batchtasks_batchtask ({TASK_COLUMNS}) FROM STDIN") as copy:
            for pk, kind in enumerate(kinds(), start=1):
                copy.write_row(task_row(pk, kind, definitions[pk % TYPES], now, rng))
        cursor.execute(ATTEMPTS_SQL)
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('batchtasks_batchtask', 'id'), %s)", [TASKS]
        )
        cursor.execute("VACUUM ANALYZE")


class QueryTimer:
    """``connection.execute_wrapper`` that keeps each statement's time and SQL."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, float]] = []

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.calls.append((sql, params, (time.perf_counter() - start) * 1000))


def scrape_times() -> tuple[list[float], list[list[tuple[str, Any, float]]], int]:
    """Wall ms of each scrape, the statements of each, and the response size."""
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client

    client = Client()
    client.force_login(User.objects.create_user("scraper", is_staff=True))
    walls, statements, size = [], [], 0
    for _ in range(SCRAPES + 2):  # two warm-ups
        timer = QueryTimer()
        start = time.perf_counter()
        with connection.execute_wrapper(timer):
            response = client.get("/batchtasks/metrics/")
        walls.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.status_code
        statements.append(timer.calls)
        size = len(response.content)
    return walls[2:], statements[2:], size


def explain(sql: str, params: Any) -> list[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
        return [row[0] for row in cursor.fetchall()]


def report(walls: list[float], statements: list[list[tuple[str, Any, float]]], size: int) -> None:
    """Print the timings, each statement's median, and the plans, as Markdown."""

    def p(values: list[float]) -> str:
        return f"p50 {percentile(values, 50):.1f}, p95 {percentile(values, 95):.1f}"

    sql_ms = [sum(ms for *_, ms in calls) for calls in statements]
    print(f"\n## Scrape: {TASKS:,} task rows, {HOUR:,} finished in the last hour\n")
    print(f"- wall ms over {len(walls)} scrapes: {p(walls)}, max {max(walls):.1f}")
    print(f"- SQL ms (all statements): {p(sql_ms)}")
    print(f"- statements per scrape: {len(statements[0])}; response {size:,} bytes\n")
    print("| # | median ms | statement |\n|---|---|---|")
    for i, (sql, _, _) in enumerate(statements[0]):
        median = statistics.median(calls[i][2] for calls in statements)
        print(f"| {i + 1} | {median:.2f} | `{' '.join(sql.split())[:160]}` |")
    for i, (sql, params, _) in enumerate(statements[0]):
        if sql.lstrip().upper().startswith("SELECT") and "batchtasks_" in sql:
            print(
                f"\n### Plan of statement {i + 1}\n```\n"
                + "\n".join(explain(sql, params))
                + "\n```"
            )


def main() -> None:
    with scratch_database("metrics", keep=KEEP) as url:
        configure(url)
        start = time.perf_counter()
        fill()
        print(f"filled {TASKS:,} tasks in {time.perf_counter() - start:.0f} s")
        report(*scrape_times())


if __name__ == "__main__":
    main()
