"""``python -m bench.run schedules``: what 1,000 schedules cost the workers' passes.

Every worker runs a schedules pass each ``SCHEDULE_INTERVAL``; with many schedules the
pass must cost the same when nothing is due (it reads only the due ones, by the partial
index on ``next_run_at``), and the due ticks are claimed (tick row + task + publish in
one transaction each) at some rate. Measured in this process, on the bench database.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta

N_SCHEDULES = 1000
IDLE_PASSES = 200


def _make(count: int) -> None:
    from batchtasks.core.schedules import Timing, last_ticks
    from batchtasks.db.sql import database_now
    from batchtasks.models import BatchTaskSchedule

    now = database_now("default")
    [due] = last_ticks(Timing(every=3600), now - timedelta(hours=2), now, 1)
    BatchTaskSchedule.objects.bulk_create(
        BatchTaskSchedule(
            name=f"bench-{i}",
            type_name="examples.noop",
            every=3600,
            overlap=True,
            next_run_at=due,
        )
        for i in range(count)
    )


def _idle_pass_ms() -> float:
    from batchtasks.services.schedules import run_due

    times = []
    for _ in range(IDLE_PASSES):
        start = time.perf_counter()
        run_due()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _truncate() -> None:
    from django.db import connection

    from batchtasks.models import (
        BatchTask,
        BatchTaskAttempt,
        BatchTaskParameters,
        BatchTaskSchedule,
        BatchTaskScheduleTick,
    )

    models = (BatchTask, BatchTaskParameters, BatchTaskAttempt, BatchTaskSchedule)
    tables = [m._meta.db_table for m in (*models, BatchTaskScheduleTick)]
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)}")


def bench_schedules() -> list[tuple[str, str, str, str]]:
    from batchtasks import BatchTask
    from batchtasks.services.schedules import run_due

    _truncate()
    BatchTask.submit("examples.noop")  # the definition, and warm connections
    idle = {}
    for count in (10, N_SCHEDULES):
        _make(count)
        claimed, start = 0, time.perf_counter()
        while done := len(run_due().submitted):
            claimed += done
        rate = claimed / (time.perf_counter() - start)
        idle[count] = _idle_pass_ms()
        _truncate()
    return [
        (
            f"schedules: {N_SCHEDULES:,} due ticks claimed, each with its task (tick row, "
            "submit, publish after commit), in passes of one process",
            f"{rate:,.0f} ticks/s",
            "-",
            "-",
        ),
        (
            f"schedules: a pass with none due, p50 of {IDLE_PASSES}: 10 schedules vs "
            f"{N_SCHEDULES:,}",
            f"{idle[10]:.2f} ms vs {idle[N_SCHEDULES]:.2f} ms",
            "-",
            f"{idle[N_SCHEDULES] / idle[10]:.2f}x",
        ),
    ]
