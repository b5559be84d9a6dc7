"""Schedules on the real database: ticks claimed once, catch-up after an outage, overlap,
the settings' rows, and a schedule whose type is gone. Times are injected (``now=``)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from batchtasks.core.conf import get_settings
from batchtasks.core.exceptions import ConfigurationError, InvalidTaskOption
from batchtasks.core.plugin import BatchTaskPlugin
from batchtasks.core.registry import batchtask, registry
from batchtasks.core.schedules import next_tick
from batchtasks.core.states import TaskState
from batchtasks.models import BatchTask, BatchTaskSchedule, BatchTaskScheduleTick, TickOutcome
from batchtasks.services.schedule_rows import retime, sync_schedules
from batchtasks.services.schedules import TICKS_KEPT, prune_ticks, run_due

pytestmark = pytest.mark.usefixtures("definitions")

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def schedule(name: str = "tick", **fields: Any) -> BatchTaskSchedule:
    values = {"type_name": "examples.noop", "every": 60, "next_run_at": T0, **fields}
    return BatchTaskSchedule.objects.create(name=name, **values)


def tick_rows(row: BatchTaskSchedule) -> list[tuple[datetime, str, int | None]]:
    ticks = BatchTaskScheduleTick.objects.filter(schedule=row).order_by("tick")
    return list(ticks.values_list("tick", "outcome", "task_id"))


def test_a_due_tick_submits_one_task_and_a_second_pass_none() -> None:
    row = schedule(params={"n": 1}, description="nightly noop")
    first = run_due(now=T0 + timedelta(seconds=1))
    again = run_due(now=T0 + timedelta(seconds=2))
    assert len(first.submitted) == 1 and again.submitted == []
    task = BatchTask.objects.get(pk=first.submitted[0])
    assert (task.definition.name, task.description) == ("examples.noop", "nightly noop")
    assert tick_rows(row) == [(T0, TickOutcome.SUBMITTED, task.pk)]
    row.refresh_from_db()
    assert row.next_run_at == T0 + timedelta(seconds=60)
    assert row.last_task_id == task.pk


def test_a_tick_claimed_elsewhere_is_not_submitted_again() -> None:
    row = schedule()
    run_due(now=T0)
    # As if another process's pass read the schedule before this one's update.
    BatchTaskSchedule.objects.filter(pk=row.pk).update(next_run_at=T0)
    assert run_due(now=T0 + timedelta(seconds=1)).submitted == []
    assert BatchTask.objects.count() == 1


@pytest.mark.parametrize(
    ("catch_up", "expected"),
    [("all", 11), ("latest", 1), ("none", 0)],
)
def test_after_an_outage_catch_up_decides_what_runs(catch_up: str, expected: int) -> None:
    # Ticks every minute from T0; the cluster was down for ten and a half minutes.
    row = schedule(catch_up=catch_up, overlap=True)
    done = run_due(now=T0 + timedelta(minutes=10, seconds=30))
    assert len(done.submitted) == expected
    assert done.dropped == 11 - expected
    ticks = [t for t, _, _ in tick_rows(row)]
    if catch_up == "latest":
        assert ticks == [T0 + timedelta(minutes=10)]
    row.refresh_from_db()
    assert row.next_run_at == T0 + timedelta(minutes=11)


def test_catch_up_all_runs_at_most_its_limit_of_the_newest_ticks() -> None:
    row = schedule(catch_up="all", catch_up_limit=3, overlap=True)
    assert len(run_due(now=T0 + timedelta(minutes=10, seconds=30)).submitted) == 3
    assert [t for t, _, _ in tick_rows(row)] == [T0 + timedelta(minutes=m) for m in (8, 9, 10)]


def test_an_on_time_tick_runs_whatever_the_catch_up() -> None:
    schedule(catch_up="none")
    assert len(run_due(now=T0 + timedelta(seconds=3)).submitted) == 1


def test_a_tick_is_skipped_while_the_previous_task_is_unfinished() -> None:
    row = schedule()
    first = run_due(now=T0).submitted
    second = run_due(now=T0 + timedelta(seconds=60))
    assert second.submitted == [] and second.skipped == 1
    BatchTask.objects.filter(pk=first[0]).update(state=TaskState.SUCCEEDED)
    assert len(run_due(now=T0 + timedelta(seconds=120)).submitted) == 1
    assert [o for _, o, _ in tick_rows(row)] == [
        TickOutcome.SUBMITTED,
        TickOutcome.SKIPPED_OVERLAP,
        TickOutcome.SUBMITTED,
    ]


def test_with_overlap_a_tick_runs_beside_the_unfinished_previous_task() -> None:
    schedule(overlap=True)
    run_due(now=T0)
    assert len(run_due(now=T0 + timedelta(seconds=60)).submitted) == 1


def test_a_schedule_whose_type_is_unknown_fails_its_tick_not_the_others() -> None:
    broken = schedule("broken", type_name="examples.gone")
    schedule("fine")
    done = run_due(now=T0)
    assert len(done.submitted) == 1 and done.failed == 1
    [(_, outcome, task)] = tick_rows(broken)
    assert (outcome, task) == (TickOutcome.FAILED, None)
    broken.refresh_from_db()
    assert broken.next_run_at == T0 + timedelta(seconds=60)


def test_a_disabled_schedule_does_not_run() -> None:
    schedule(enabled=False)
    assert run_due(now=T0).submitted == []


def test_an_edited_schedule_ticks_on_its_new_timing_at_the_next_pass() -> None:
    row = schedule(every=3600)
    row.every, row.cron = None, "*/5 * * * *"
    retime(row)
    row.save()
    assert row.next_run_at is not None
    assert row.next_run_at.minute % 5 == 0 and row.next_run_at.second == 0
    assert len(run_due(now=row.next_run_at).submitted) == 1


NIGHTLY = {
    "type": "examples.noop",
    "cron": "30 2 * * *",
    "timezone": "Europe/Oslo",
    "params": {},
    "catch_up": "latest",
    "overlap": False,
}


def test_settings_schedules_are_synced_into_rows(settings: Any) -> None:
    settings.BATCHTASKS = {
        **settings.BATCHTASKS,
        "SCHEDULES": {
            "nightly-report": NIGHTLY,
            "heartbeat": {"type": "examples.noop", "every": 2},
        },
    }
    sync_schedules()
    nightly = BatchTaskSchedule.objects.get(name="nightly-report")
    assert (nightly.source, nightly.cron, nightly.timezone) == (
        "settings",
        "30 2 * * *",
        "Europe/Oslo",
    )
    assert nightly.next_run_at is not None
    assert nightly.next_run_at.astimezone(nightly.timing.zone).strftime("%H:%M") == "02:30"
    assert BatchTaskSchedule.objects.get(name="heartbeat").every == 2


def test_settings_win_at_sync_but_a_schedule_paused_in_the_admin_stays_paused(
    settings: Any,
) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "SCHEDULES": {"nightly-report": NIGHTLY}}
    sync_schedules()
    BatchTaskSchedule.objects.filter(name="nightly-report").update(enabled=False, cron="0 1 * * *")
    sync_schedules()
    row = BatchTaskSchedule.objects.get(name="nightly-report")
    assert (row.enabled, row.cron) == (False, "30 2 * * *")


def test_a_schedule_removed_from_settings_is_disabled_not_deleted(settings: Any) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "SCHEDULES": {"nightly-report": NIGHTLY}}
    sync_schedules()
    settings.BATCHTASKS = {**settings.BATCHTASKS, "SCHEDULES": {}}
    sync_schedules()
    row = BatchTaskSchedule.objects.get(name="nightly-report")
    assert (row.enabled, row.next_run_at) == (False, None)


def test_a_settings_schedule_of_an_unknown_type_is_left_out(settings: Any) -> None:
    settings.BATCHTASKS = {
        **settings.BATCHTASKS,
        "SCHEDULES": {"bad": {**NIGHTLY, "type": "examples.nope"}, "good": NIGHTLY},
    }
    synced = sync_schedules()
    assert [row.name for row in synced] == ["good"]
    assert not BatchTaskSchedule.objects.filter(name="bad").exists()


def test_the_cli_runs_due_ticks_and_lists_next_and_last_run_with_the_task() -> None:
    out = StringIO()
    schedule("hourly-noop", every=3600)  # due since T0, long ago: the latest tick runs
    call_command("batchtasks", "schedules", "--run-due", stdout=out)
    [task] = BatchTask.objects.all()
    text = out.getvalue()
    assert "Submitted: 1;" in text
    assert "hourly-noop" in text and "every 3600 s" in text
    assert f"{task.pk} {task.state}" in text
    listed = StringIO()
    call_command("batchtasks", "schedules", stdout=listed)
    assert "hourly-noop" in listed.getvalue() and "Submitted" not in listed.getvalue()


def test_old_tick_rows_are_pruned_to_the_newest_ones() -> None:
    row = schedule()
    BatchTaskScheduleTick.objects.bulk_create(
        BatchTaskScheduleTick(schedule=row, tick=T0 + timedelta(minutes=i), claimed_at=T0)
        for i in range(TICKS_KEPT + 20)
    )
    assert prune_ticks(row.pk, using="default") == 20
    kept = BatchTaskScheduleTick.objects.filter(schedule=row).order_by("tick")
    assert kept.count() == TICKS_KEPT and kept[0].tick == T0 + timedelta(minutes=20)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"type": "examples.noop", "cron": "30 25 * * *"}, "is not a cron expression"),
        ({"type": "examples.noop", "every": 5, "timezone": "Oslo"}, "unknown timezone 'Oslo'"),
        ({"type": "examples.noop", "every": 5, "catch_up": "some"}, "catch_up='some'"),
        (
            {"type": "examples.noop", "every": 5, "overlapping": True},
            "unknown key(s) 'overlapping'",
        ),
        ({"every": 5}, "needs 'type'"),
    ],
)
def test_bad_schedules_in_settings_are_configuration_errors_naming_them(
    settings: Any, options: dict[str, Any], says: str
) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "SCHEDULES": {"nightly": options}}
    with pytest.raises(ConfigurationError, match="nightly") as caught:
        get_settings()
    assert says in str(caught.value)


@pytest.fixture
def scheduled_type() -> Iterator[str]:
    @batchtask("tests.scheduled", schedule={"cron": "0 3 * * *", "timezone": "Europe/Oslo"})
    class Scheduled(BatchTaskPlugin):
        def run(self, params: Any) -> None:
            return None

    yield "tests.scheduled"
    registry.unregister("tests.scheduled")


def test_a_schedule_declared_with_its_type_is_synced_and_the_settings_win(
    scheduled_type: str, settings: Any
) -> None:
    [row] = sync_schedules()
    assert (row.name, row.type_name, row.source, row.cron) == (
        scheduled_type,
        scheduled_type,
        "code",
        "0 3 * * *",
    )
    settings.BATCHTASKS = {
        **settings.BATCHTASKS,
        "SCHEDULES": {scheduled_type: {"type": scheduled_type, "every": 600}},
    }
    [row] = sync_schedules()
    assert (row.source, row.cron, row.every) == ("settings", "", 600)


def test_a_bad_schedule_in_the_decorator_is_refused_naming_the_type() -> None:
    with pytest.raises(InvalidTaskOption, match=r"Schedule 'tests.bad': cron='0 3 \* \*'"):
        batchtask("tests.bad", schedule={"cron": "0 3 * *"})


@pytest.mark.parametrize(
    ("cron", "expected"),
    [("*/30 * * * *", 24), ("30 2 * * *", 1)],
    ids=["half-hourly", "daily-02:30"],
)
def test_passes_through_the_fall_back_night_run_each_tick_once(cron: str, expected: int) -> None:
    # Europe/Oslo, 2026-10-25: 03:00 CEST becomes 02:00 CET. A pass every 10 minutes
    # from 22:00 to 10:00 UTC (12 h).
    start = datetime(2026, 10, 24, 22, 0, tzinfo=UTC)
    row = BatchTaskSchedule(name="night", type_name="examples.noop", cron=cron, overlap=True)
    row.timezone = "Europe/Oslo"
    row.next_run_at = next_tick(row.timing, start)
    row.save()
    for step in range(1, 73):
        run_due(now=start + timedelta(minutes=10 * step))
    ticks = [t for t, _, _ in tick_rows(row)]
    assert len(ticks) == expected == BatchTask.objects.count()
    assert {b - a for a, b in itertools.pairwise(ticks)} <= {timedelta(minutes=30)}
