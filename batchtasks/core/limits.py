"""Rate limits: the ``"N/s"``, ``"N/m"``, ``"N/h"`` option and the arithmetic of its
per-key budget (GCRA, the generic cell rate algorithm: one timestamp per key).

A key's row holds its theoretical arrival time ``tat``: when its next start would be
on time if starts came exactly one ``interval`` (period / N) apart. A key may start a
task now if ``tat`` is no further ahead than the ``tolerance``; each start moves ``tat``
one interval on. The tolerance is ``burst - 1`` intervals plus a margin of at most
50 ms, so that a dispatcher that wakes a few milliseconds late does not lose starts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from .exceptions import InvalidTaskOption

PERIODS = {"s": 1, "m": 60, "h": 3600}
_RATE = re.compile(r"([1-9][0-9]{0,6})/([smh])")
#: The most a late dispatcher is made up for (and a start may come early), in seconds.
LATE_MARGIN = 0.05


@dataclass(frozen=True)
class Rate:
    """At most ``count`` starts per ``period`` seconds, per key."""

    count: int
    period: int

    @property
    def interval(self) -> float:
        """Seconds between starts at the steady rate."""
        return self.period / self.count

    @property
    def burst(self) -> int:
        """Starts a key idle long enough may make at once: a tenth of the rate, at least 1."""
        return max(1, self.count // 10)

    @property
    def tolerance(self) -> float:
        """How far ahead of now a key's ``tat`` may be for it to start a task."""
        return (self.burst - 1) * self.interval + min(self.interval / 2, LATE_MARGIN)

    def budget(self, tat: datetime | None, now: datetime) -> int:
        """How many tasks the key whose row says ``tat`` may start at ``now``."""
        lead = (self.start(tat, now) - now).total_seconds()
        if lead > self.tolerance:
            return 0
        return math.floor((self.tolerance - lead) / self.interval + 1e-9) + 1

    def start(self, tat: datetime | None, now: datetime) -> datetime:
        """Where the key's next start is counted from: its ``tat``, or now if that passed."""
        return now if tat is None or tat < now else tat

    def after(self, start: datetime, starts: int) -> datetime:
        """``start`` moved on by ``starts`` intervals: the ``tat`` after that many starts,
        or (less the tolerance) the earliest start of the task that many places behind."""
        return start + timedelta(seconds=starts * self.interval)

    def earliest(self, start: datetime, place: int) -> datetime:
        """The earliest start of the task ``place`` places into the key's line (0: next)."""
        return self.after(start, place) - timedelta(seconds=self.tolerance)


def parse_rate(value: str) -> Rate | None:
    """The ``Rate`` of a ``rate_limit`` text (``""``: none); ``InvalidTaskOption`` if bad."""
    if value == "":
        return None
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidTaskOption(
            f"rate_limit={value!r} must be starts per second, minute or hour written as "
            "'N/s', 'N/m' or 'N/h' with N a whole number from 1 (for example '20/s'), "
            "or None for no rate limit."
        )
    return Rate(int(match[1]), PERIODS[match[2]])
