"""The Celery beat bridge: django-celery-beat's periodic tasks submit batch tasks through
``batchtasks.submit_scheduled``, once per tick however many beats send it."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("django_celery_beat")

from celery.beat import Scheduler
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_beat.schedulers import ModelEntry

from batchtasks.core.states import TaskState
from batchtasks.models import BatchTask, BatchTaskSchedule, BatchTaskScheduleTick
from batchtasks.worker.beat import submit_scheduled
from project.celery import app
from tests.workers import wait_for


def periodic_task(name: str) -> PeriodicTask:
    every = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.HOURS)
    return PeriodicTask.objects.create(
        name=name,
        task="batchtasks.submit_scheduled",
        interval=every,
        args=json.dumps(["examples.noop", {"n": 7}]),
        kwargs=json.dumps({"tick_seconds": 3600}),
    )


def test_two_beats_sending_the_same_tick_make_one_batch_task(start_worker) -> None:
    worker = start_worker("w1", ["celery", "batch.examples.noop"], 1)
    entry = ModelEntry(periodic_task("hourly noop"), app=app)
    for _beat in range(2):  # each beat process sends the due entry, as beats do
        Scheduler(app, lazy=True).apply_async(entry, advance=False)

    wait_for(lambda: worker.log_count("succeeded in") >= 2, timeout=60)
    schedule = BatchTaskSchedule.objects.get(name="celery-beat:hourly noop")
    [tick] = BatchTaskScheduleTick.objects.filter(schedule=schedule)
    [task] = BatchTask.objects.filter(definition__name="examples.noop")
    assert tick.task_id == task.pk and schedule.source == "celery-beat"
    assert task.params == {"n": 7}
    assert wait_for(lambda: BatchTask.objects.get(pk=task.pk).state == TaskState.SUCCEEDED)


def test_the_bridge_refuses_an_unknown_type(start_worker) -> None:
    worker = start_worker("w1", ["celery"], 1)
    app.send_task("batchtasks.submit_scheduled", args=["examples.gone", {}], queue="celery")
    wait_for(lambda: "Unknown task type 'examples.gone'" in worker.log(), timeout=60)
    assert not BatchTask.objects.exists()


@pytest.mark.usefixtures("definitions")
def test_a_beat_schedule_disabled_in_the_admin_submits_nothing() -> None:
    BatchTaskSchedule.objects.create(
        name="celery-beat:paused", type_name="examples.noop", every=60, enabled=False
    )
    assert submit_scheduled.run("examples.noop", {}, schedule="paused") is None
    assert submit_scheduled.run("examples.noop", {}, schedule="running") is not None
    assert BatchTask.objects.count() == 1
