"""Schedules with real workers: every worker's agent races for the same ticks, and each
tick still makes exactly one task."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import timedelta

from batchtasks.core.states import TaskState
from batchtasks.models import BatchTask, BatchTaskSchedule, BatchTaskScheduleTick, TickOutcome
from batchtasks.services.schedule_rows import retime
from tests.workers import wait_for

ENV = {"BATCHTASKS_SCHEDULE_INTERVAL": "0.2"}


def test_three_workers_racing_on_ticks_make_one_task_per_tick(start_worker) -> None:
    row = BatchTaskSchedule(name="race", type_name="examples.noop", every=1, overlap=True)
    retime(row)
    row.save()
    workers = [start_worker(f"w{i}", ["batch.examples.noop"], 1, env=ENV) for i in (1, 2, 3)]

    claimed = BatchTaskScheduleTick.objects.filter(schedule=row)
    wait_for(lambda: claimed.count() >= 8, timeout=60)
    for worker in workers:
        worker.kill()

    ticks = list(claimed.order_by("tick").values_list("tick", "outcome", "task_id"))
    assert {outcome for _, outcome, _ in ticks} == {TickOutcome.SUBMITTED}
    tasks = [task for _, _, task in ticks]
    assert None not in tasks and len(set(tasks)) == len(tasks)
    made = BatchTask.objects.filter(definition__name="examples.noop")
    assert Counter(made.values_list("pk", flat=True)) == Counter(tasks), "a task without a tick"
    # Every second has its tick: none lost, none doubled.
    times = [tick for tick, _, _ in ticks]
    assert {b - a for a, b in itertools.pairwise(times)} == {timedelta(seconds=1)}
    assert made.filter(state=TaskState.SUCCEEDED).count() >= len(tasks) - 3
