"""When schedules tick: cron in a time zone across daylight saving, fixed intervals, and
the ticks an outage missed. The times are given; nothing waits for the clock."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from batchtasks.core.exceptions import InvalidTaskOption
from batchtasks.core.schedules import Timing, check_timing, last_ticks, next_tick

OSLO_DAILY = Timing(cron="30 2 * * *", timezone="Europe/Oslo")
OSLO_HALF_HOURS = Timing(cron="*/30 * * * *", timezone="Europe/Oslo")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ticks(timing: Timing, start: datetime, end: datetime) -> list[datetime]:
    found, at = [], start
    while (at := next_tick(timing, at)) <= end:
        found.append(at)
    return found


def test_daily_schedule_runs_once_on_the_spring_forward_day_just_after_the_gap() -> None:
    # 2026-03-29: Oslo's clocks jump from 02:00 CET to 03:00 CEST; 02:30 does not exist.
    assert ticks(OSLO_DAILY, utc(2026, 3, 27, 12), utc(2026, 3, 30, 12)) == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 30),  # 03:30 CEST: as far past the gap as 02:30 was into it
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]


def test_daily_schedule_runs_once_not_twice_on_the_fall_back_day() -> None:
    # 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
    assert ticks(OSLO_DAILY, utc(2026, 10, 23, 12), utc(2026, 10, 26, 12)) == [
        utc(2026, 10, 24, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 0, 30),  # the first 02:30 (CEST) only
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
    ]


def test_a_gap_tick_that_meets_a_real_tick_runs_once() -> None:
    both = Timing(cron="30 2,3 * * *", timezone="Europe/Oslo")
    day = ticks(both, utc(2026, 3, 28, 22), utc(2026, 3, 29, 22))
    assert day == [utc(2026, 3, 29, 1, 30)]  # 02:30 and 03:30 are both 03:30 CEST


@pytest.mark.parametrize(
    "start", [utc(2026, 3, 28, 20), utc(2026, 10, 24, 20)], ids=["spring", "autumn"]
)
def test_half_hourly_schedule_neither_doubles_nor_loses_ticks_across_a_change(
    start: datetime,
) -> None:
    found = ticks(OSLO_HALF_HOURS, start, start + timedelta(hours=12))
    assert len(found) == 24
    assert {b - a for a, b in itertools.pairwise(found)} == {timedelta(minutes=30)}


def test_fixed_interval_ticks_on_multiples_of_its_seconds_in_any_zone() -> None:
    timing = Timing(every=90, timezone="Pacific/Chatham")
    assert next_tick(timing, utc(2026, 1, 1, 0, 0, 0)) == utc(2026, 1, 1, 0, 1, 30)
    assert next_tick(timing, utc(2026, 1, 1, 0, 1, 30)) == utc(2026, 1, 1, 0, 3, 0)


def test_last_ticks_gives_the_newest_missed_ones_oldest_first() -> None:
    hourly = Timing(cron="0 * * * *", timezone="Europe/Oslo")
    missed = last_ticks(hourly, utc(2026, 10, 24, 20, 30), utc(2026, 10, 25, 3, 10), 3)
    assert missed == [utc(2026, 10, 25, 1), utc(2026, 10, 25, 2), utc(2026, 10, 25, 3)]
    every = last_ticks(Timing(every=10), utc(2026, 1, 1, 0, 0, 5), utc(2026, 1, 1, 0, 0, 40), 100)
    assert every == [utc(2026, 1, 1, 0, 0, s) for s in (10, 20, 30, 40)]


def test_last_ticks_across_fall_back_matches_next_tick() -> None:
    start, end = utc(2026, 10, 24, 20), utc(2026, 10, 25, 6)
    assert last_ticks(OSLO_HALF_HOURS, start, end, 1000) == ticks(OSLO_HALF_HOURS, start, end)
    assert last_ticks(OSLO_DAILY, start - timedelta(days=3), end, 1000) == ticks(
        OSLO_DAILY, start - timedelta(days=3), end
    )


@pytest.mark.parametrize(
    ("cron", "every", "timezone", "says"),
    [
        ("61 * * * *", None, "UTC", "not a cron expression"),
        ("* * *", None, "UTC", "not a cron expression"),
        ("0 0 30 2 *", None, "UTC", "never matches"),
        ("", None, "UTC", "exactly one of cron"),
        ("* * * * *", 5, "UTC", "exactly one of cron"),
        ("", 0, "UTC", "every=0"),
        ("* * * * *", None, "Europe/Nowhere", "unknown timezone 'Europe/Nowhere'"),
    ],
)
def test_bad_timing_is_refused_naming_the_schedule(
    cron: str, every: int | None, timezone: str, says: str
) -> None:
    with pytest.raises(InvalidTaskOption, match="Schedule 'nightly'") as caught:
        check_timing("nightly", cron, every, timezone)
    assert says in str(caught.value)


def test_cron_aliases_are_understood() -> None:
    daily = check_timing("d", "@daily", None, "UTC")
    assert next_tick(daily, utc(2026, 5, 1, 12)) == utc(2026, 5, 2)
