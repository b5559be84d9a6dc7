"""The dispatcher's pass for a rate-limited type with few keys and with 10,000.

Step ``ratelimits`` of ``make bench`` (``python -m bench.run ratelimits``): no worker,
passes run in this process. For each number of keys (``BENCH_RATE_KEYS``, default 10 and
10,000), ``BENCH_RATE_TASKS`` (30,000) due tasks of a ``1/m`` type are spread evenly over
the keys and inserted by one statement. Then:

- the first passes: every key starts one task (the admitted are marked done between
  passes, as there is no worker), the rest are deferred to their earliest start
  (``services.admission``), until none is due;
- ``BENCH_RATE_PASSES`` (20) times, 100 deferred tasks of as many keys as there are fall
  due again (``run_after`` cleared) and one ``dispatch_queue`` is timed: it reads them,
  locks their keys' rows and defers them again (every key is over its rate). The table
  is vacuumed and analysed first, as autovacuum would leave it.

The second is the steady cost of a pass: it should not grow with the number of keys.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from bench.run import percentile, reset
from bench.scratch import copy_task

KEYS = [int(k) for k in os.environ.get("BENCH_RATE_KEYS", "10,10000").split(",")]
TASKS = int(os.environ.get("BENCH_RATE_TASKS", "30000"))
PASSES = int(os.environ.get("BENCH_RATE_PASSES", "20"))
DUE = 100
TYPE = "bench.rated"
QUEUE = "batch.bench.rated"


def _register() -> None:
    from batchtasks import BatchTaskPlugin, batchtask
    from batchtasks.core.registry import registry

    if TYPE in registry:
        return

    @batchtask(TYPE, rate_limit="1/m")
    class Rated(BatchTaskPlugin):
        def run(self, params: Any) -> None:
            return None


def _fill(keys: int) -> None:
    """``TASKS`` due tasks, copies of one submitted task, over ``keys`` rate keys."""
    from batchtasks import BatchTask
    from batchtasks.models import BatchTaskDefinition, BatchTaskRateLimit

    template = BatchTask.submit(TYPE, description="template")
    BatchTaskRateLimit.objects.all().delete()
    BatchTaskDefinition.objects.filter(name=TYPE).update(rate_limit="1/m")
    made = {
        "rate_key": f"'k' || (g %% {keys})",
        "fair_round": "g",
        "state": "'new'",
        "queue": "''",
        "queued_at": "NULL",
    }
    copy_task(template.pk, TASKS, made)


def _due_again() -> None:
    """Clear ``run_after`` of ``DUE`` deferred tasks, of as many keys as there are."""
    from django.db import connection

    from batchtasks.models import BatchTask

    table = connection.ops.quote_name(BatchTask._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET run_after = NULL WHERE id IN (SELECT DISTINCT ON (rate_key) id "
            f"FROM {table} WHERE state = 'new' AND run_after IS NOT NULL "
            "ORDER BY rate_key, random() LIMIT %s)",
            [DUE],
        )
        if cursor.rowcount < DUE:  # fewer keys than DUE: more of each
            cursor.execute(
                f"UPDATE {table} SET run_after = NULL WHERE id IN (SELECT id FROM {table} "
                "WHERE state = 'new' AND run_after IS NOT NULL ORDER BY random() LIMIT %s)",
                [DUE - cursor.rowcount],
            )


def _finish_queued() -> None:
    """Mark the admitted tasks done (there is no worker): their slots are free again."""
    from django.db import connection

    from batchtasks.models import BatchTask

    table = connection.ops.quote_name(BatchTask._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET state = 'succeeded' WHERE state = 'queued'")


def _measure(keys: int) -> tuple[float, list[float]]:
    from django.db import connection

    from batchtasks import BatchTask
    from batchtasks.services.dispatch import dispatch_queue

    reset()
    _fill(keys)
    due = BatchTask.objects.filter(state="new", run_after__isnull=True)
    start = time.perf_counter()
    while due.exists():  # a window's worth of keys starts per round
        dispatch_queue(QUEUE)
        _finish_queued()
    first = (time.perf_counter() - start) * 1000
    with connection.cursor() as cursor:  # the state autovacuum would leave
        cursor.execute(f"VACUUM ANALYZE {connection.ops.quote_name(BatchTask._meta.db_table)}")
    passes = []
    for _ in range(PASSES):
        _due_again()
        start = time.perf_counter()
        dispatch_queue(QUEUE)
        passes.append((time.perf_counter() - start) * 1000)
    return first, passes


def bench_ratelimits() -> list[tuple[str, str, str, str]]:
    _register()
    results = {keys: _measure(keys) for keys in KEYS}
    reset()
    few = statistics.median(results[KEYS[0]][1])
    rows = []
    for keys, (first, passes) in results.items():
        median = statistics.median(passes)
        rows.append(
            (
                f"rate_limit='1/m', {keys:,} rate keys, {TASKS:,} waiting: a pass with {DUE} "
                f"tasks falling due, median / p95 of {PASSES}",
                f"{median:.1f} / {percentile(passes, 95):.1f} ms",
                "n/a (no cluster-wide rate limits)",
                f"{median / few:.2f}x {KEYS[0]:,} keys",
            )
        )
        rows.append(
            (
                f"the same: first passes, each key starts one and {TASKS - min(keys, TASKS):,} "
                "are deferred",
                f"{first:,.0f} ms ({first * 1000 / TASKS:.1f} µs a task)",
                "",
                "",
            )
        )
    return rows
