"""Priority aging's cost on a backlog of 100,000 waiting tasks.

Step ``aging`` of ``make bench`` (``python -m bench.run aging``): no worker. One type
limited to 10 in flight holds ``BENCH_AGING_TASKS`` (100,000) waiting tasks, nine in ten
at priority 100 (a flood) and one in ten at 0, submitted over the last hour (one second
apart, in turn). Measured, each the median of ``BENCH_AGING_REPEAT`` (20):

- a dispatch pass admitting 10 (the admitted are marked done between passes, as there is
  no worker), with aging off and after a sweep has aged the backlog: the dispatcher's
  statements are the same either way, only the priorities in the rows differ;
- the sweep's aging statement (``transitions.age_priorities``, 60 s a point, at most
  ``sweeper.AGE_BATCH`` rows): the first, which raises the low tasks that waited a
  point's worth; those a sweep interval (5 s) apart after it, which raise those that
  crossed a point since; and the worst case, every task below the top and due a point
  at every sweep (1 s a point), with the batch limit and without.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from bench.run import percentile, reset
from bench.scratch import copy_task

TASKS = int(os.environ.get("BENCH_AGING_TASKS", "100000"))
REPEAT = int(os.environ.get("BENCH_AGING_REPEAT", "20"))
TYPE = "bench.aged"
QUEUE = "batch.bench.aged"
LIMIT = 10
PER_POINT = 60.0
SWEEP = 5.0


def _register() -> None:
    from batchtasks import BatchTaskPlugin, batchtask
    from batchtasks.core.registry import registry

    if TYPE in registry:
        return

    @batchtask(TYPE, max_concurrency=LIMIT)
    class Aged(BatchTaskPlugin):
        def run(self, params: Any) -> None:
            return None


def _fill(low_every: int, low: int = 0, spread: int = 3600) -> None:
    """``TASKS`` waiting tasks, copies of one submitted task: one in ``low_every`` at
    priority ``low``, the others at 100; the ``g``-th submitted ``g % spread`` s ago."""
    from batchtasks import BatchTask

    template = BatchTask.submit(TYPE, description="template", run_after=timedelta(hours=1))
    made = {
        "priority": f"CASE WHEN g %% {low_every} = 0 THEN {low} ELSE 100 END",
        "fair_round": "g",
        "state": "'new'",
        "queue": "''",
        "queued_at": "NULL",
        "run_after": "NULL",
        "created_at": f"STATEMENT_TIMESTAMP() - MAKE_INTERVAL(secs => g %% {spread})",
    }
    copy_task(template.pk, TASKS, made, vacuum=True)


def _vacuum() -> None:
    from django.db import connection

    from batchtasks import BatchTask

    with connection.cursor() as cursor:  # the state autovacuum would leave
        cursor.execute(f"VACUUM ANALYZE {connection.ops.quote_name(BatchTask._meta.db_table)}")


def _later(seconds: float) -> None:
    """As if ``seconds`` passed: every waiting task's submit moves back (then a vacuum:
    the move's dead rows are this bench's, not aging's)."""
    from django.db.models import F

    from batchtasks import BatchTask

    waiting = BatchTask.objects.filter(state="new")
    waiting.update(created_at=F("created_at") - timedelta(seconds=seconds))
    _vacuum()


def _timed(action: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = action()
    return (time.perf_counter() - start) * 1000, result


def _passes() -> list[float]:
    from django.db import connection

    from batchtasks import BatchTask
    from batchtasks.services.dispatch import dispatch_queue

    table = connection.ops.quote_name(BatchTask._meta.db_table)
    times = []
    for _ in range(REPEAT):
        with connection.cursor() as cursor:  # no worker: the admitted are done
            cursor.execute(f"UPDATE {table} SET state = 'succeeded' WHERE state = 'queued'")
        elapsed, admitted = _timed(lambda: dispatch_queue(QUEUE))
        assert admitted == LIMIT, admitted
        times.append(elapsed)
    return times


def _age(per_point: float, limit: int | None = None) -> tuple[float, int]:
    from batchtasks import transitions
    from batchtasks.core.states import PRIORITY_MAX
    from batchtasks.services.sweeper import AGE_BATCH

    batch = AGE_BATCH if limit is None else limit
    return _timed(
        lambda: transitions.age_priorities(per_point, PRIORITY_MAX, batch, using="default")
    )


def bench_aging() -> list[tuple[str, str, str, str]]:
    from batchtasks.services.sweeper import AGE_BATCH

    _register()
    reset()
    _fill(low_every=10)
    off = _passes()
    first = _age(PER_POINT)
    _vacuum()
    on = _passes()
    steady = []
    for _ in range(REPEAT):
        _later(SWEEP)
        steady.append(_age(PER_POINT))
    reset()
    # Every task below the top and due a point at every sweep: none reaches the cap.
    _fill(low_every=1, low=-100, spread=60)
    worst, whole = [], []
    for _ in range(3):
        _later(1.0)
        worst.append(_age(1.0))
    for _ in range(3):
        _later(1.0)
        whole.append(_age(1.0, limit=TASKS))
    reset()
    ms = statistics.median
    times = [t for t, _ in steady]
    return [
        (
            f"dispatch pass admitting {LIMIT} of {TASKS:,} waiting (9 in 10 at priority 100), "
            f"aging off: median / p95 of {REPEAT}",
            f"{ms(off):.1f} / {percentile(off, 95):.1f} ms",
            "n/a (no aging)",
            "",
        ),
        (
            "the same after a sweep aged the backlog (60 s a point)",
            f"{ms(on):.1f} / {percentile(on, 95):.1f} ms",
            "",
            f"{ms(on) / ms(off):.2f}x off",
        ),
        (
            f"a sweep's aging statement (60 s a point, at most {AGE_BATCH:,} a sweep), "
            f"the first: {first[1]:,} of the {TASKS // 10:,} tasks at 0 raised",
            f"{first[0]:.0f} ms",
            "",
            "",
        ),
        (
            f"the same, every {SWEEP:g} s after: median {ms([r for _, r in steady]):.0f} rows "
            f"raised, median / p95 of {REPEAT}",
            f"{ms(times):.0f} / {percentile(times, 95):.0f} ms",
            "",
            "",
        ),
        (
            f"worst case: all {TASKS:,} below the top and due a point at every sweep "
            f"(1 s a point): {worst[0][1]:,} raised a sweep, median of 3",
            f"{ms([t for t, _ in worst]):.0f} ms",
            "",
            "",
        ),
        (
            f"the same without the batch limit: {whole[0][1]:,} raised, median of 3",
            f"{ms([t for t, _ in whole]):.0f} ms",
            "",
            "",
        ),
    ]
