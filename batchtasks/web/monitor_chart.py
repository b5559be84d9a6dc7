"""The monitor's throughput chart: an hour of finished and failed tasks per minute, laid
out as stacked bars for a server-rendered inline SVG (no script, no chart library)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..services.monitor import Finishes

CHART_MINUTES = 60
WIDTH, HEIGHT = 640, 180
LEFT, RIGHT, TOP, BOTTOM = 36, 8, 10, 22
BAR_GAP = 1.0
#: A time label under every tenth minute.
LABEL_EVERY = 10


@dataclass(frozen=True)
class Minute:
    """Tasks that ended in one minute, ``failed`` of them failed."""

    start: datetime
    finished: int
    failed: int


def per_minute(now: datetime, finishes: tuple[Finishes, ...]) -> list[Minute]:
    """Tasks ended in each of the last ``CHART_MINUTES`` minutes, the last one now's."""
    first = now.replace(second=0, microsecond=0) - timedelta(minutes=CHART_MINUTES - 1)
    counts: dict[datetime, tuple[int, int]] = {}
    for f in finishes:
        finished, failed = counts.get(f.minute, (0, 0))
        counts[f.minute] = (finished + f.load.finished_hour, failed + f.load.failed_hour)
    starts = [first + timedelta(minutes=i) for i in range(CHART_MINUTES)]
    return [Minute(start, *counts.get(start, (0, 0))) for start in starts]


@dataclass(frozen=True)
class Bar:
    """One minute: failed tasks at the bottom, the others that ended stacked above."""

    start: datetime
    finished: int
    failed: int
    x: str
    width: str
    failed_y: str
    failed_height: str
    others_y: str
    others_height: str


@dataclass(frozen=True)
class Tick:
    """An axis label and where it goes."""

    at: str
    label: str


@dataclass(frozen=True)
class TimeTick:
    """A time under the x axis."""

    at: str
    start: datetime


@dataclass(frozen=True)
class Chart:
    """Coordinates as strings, so the template's number localisation cannot touch them."""

    width: int
    height: int
    left: int
    right: int
    top: int
    baseline: int
    plot_height: int
    bars: tuple[Bar, ...]
    y_ticks: tuple[Tick, ...]
    x_ticks: tuple[TimeTick, ...]
    finished: int
    failed: int


def _px(value: float) -> str:
    return f"{value:.1f}"


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50… that is at least ``value``."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def build_chart(now: datetime, finishes: tuple[Finishes, ...]) -> Chart:
    """Lay the last hour's minutes out left (oldest) to right (now)."""
    minutes = per_minute(now, finishes)
    top_value = nice_ceiling(max((m.finished for m in minutes), default=0))
    plot_height = HEIGHT - TOP - BOTTOM
    baseline = HEIGHT - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(len(minutes), 1)

    def height(count: int) -> float:
        return count * plot_height / top_value

    bars = []
    for i, m in enumerate(minutes):
        failed_h, others_h = height(m.failed), height(m.finished - m.failed)
        bars.append(
            Bar(
                start=m.start,
                finished=m.finished,
                failed=m.failed,
                x=_px(LEFT + i * slot + BAR_GAP / 2),
                width=_px(slot - BAR_GAP),
                failed_y=_px(baseline - failed_h),
                failed_height=_px(failed_h),
                others_y=_px(baseline - failed_h - others_h),
                others_height=_px(others_h),
            )
        )
    values = sorted({0, top_value // 2, top_value}) if top_value > 1 else [0, 1]
    y_ticks = tuple(Tick(_px(baseline - height(v)), str(v)) for v in values)
    x_ticks = tuple(
        TimeTick(_px(LEFT + i * slot), m.start)
        for i, m in enumerate(minutes)
        if i % LABEL_EVERY == 0
    )
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        right=WIDTH - RIGHT,
        top=TOP,
        baseline=baseline,
        plot_height=plot_height,
        bars=tuple(bars),
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        finished=sum(m.finished for m in minutes),
        failed=sum(m.failed for m in minutes),
    )
