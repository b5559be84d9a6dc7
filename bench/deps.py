"""``group.then`` fan-in: a child of ``BENCH_FANIN`` (10,000) no-op tasks, one worker
-c 2. Measured: the child's submit (10,000 links), the time from the last parent's end
to the child's start (the last parent's final write makes the child due and dispatches
it: no polling), and the parents' drain rate (every parent's end also counts the child
down in its own transaction). Median of ``BENCH_REPEAT`` runs (min-max)."""

from __future__ import annotations

import os
import time

N_FANIN = int(os.environ.get("BENCH_FANIN", "10000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))


def _reset() -> None:
    from django.db import connection

    from batchtasks.models import BatchTaskDependency
    from bench.run import reset

    reset()
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {BatchTaskDependency._meta.db_table}")


def _one_run() -> tuple[float, float, float]:
    """Seconds of the child's submit, ms from the last parent's end to the child's
    start, and parents ended per second."""
    from django.db.models import Max, Min

    from batchtasks import BatchTask, TaskState
    from bench.run import all_done, wait_until

    _reset()
    group = BatchTask.submit_many("examples.noop", [{}] * N_FANIN)
    start = time.perf_counter()
    child = group.then("examples.noop")
    submit = time.perf_counter() - start
    wait_until(all_done, timeout=900, interval=0.05)
    child.refresh_from_db()
    assert child.state == TaskState.SUCCEEDED, child.state
    parents = group.tasks().aggregate(first=Min("started_at"), last=Max("finished_at"))
    fan_in = (child.started_at - parents["last"]).total_seconds() * 1000
    drain = N_FANIN / (parents["last"] - parents["first"]).total_seconds()
    return submit, fan_in, drain


def bench_fanin() -> list[tuple[str, str, str, str]]:
    from bench.run import spread, worker

    runs = []
    with worker(["batch.examples.noop"]):
        for _ in range(REPEAT):
            runs.append(_one_run())
    _reset()
    submits, fan_ins, drains = (list(column) for column in zip(*runs, strict=True))
    n = f"{N_FANIN:,}"
    return [
        (
            f"group.then over {n} no-op tasks: last parent's end to the child's start, "
            f"one worker -c 2; median of {REPEAT} (min-max)",
            spread(fan_ins, ".1f", "ms"),
            "n/a (a chord needs a result backend)",
            "",
        ),
        (
            f"the same: the child's submit ({n} links)",
            spread([s * 1000 for s in submits], ",.0f", "ms"),
            "",
            "",
        ),
        (
            f"the same: the {n} parents' drain (each end counts the child down)",
            spread(drains, ",.0f", "tasks/s"),
            "",
            "",
        ),
    ]
