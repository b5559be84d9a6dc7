"""When a schedule's ticks fall: cron expressions in an IANA time zone, or fixed intervals.

Plain Python, croniter and zoneinfo; no database. croniter is fed naive local wall times
(its own handling of aware times is not used) and this module maps each wall time to
instants with zoneinfo, by one rule that keeps both daylight-saving promises:

- An expression whose hour field is a wildcard (``*`` or ``*/n``) follows elapsed time:
  a wall time that occurs twice (the fall-back hour) ticks at both instants, one that
  does not occur (the spring-forward gap) does not tick. ``*/30`` therefore ticks every
  30 minutes of real time across both changes.
- An expression with fixed hours follows the wall clock: a wall time that occurs twice
  ticks once, at its first occurrence; one that does not occur ticks at the instant as
  far past the gap as the wall time is into it (02:30 on the day Europe/Oslo springs
  from 02:00 to 03:00 ticks at 03:30), once even if that is also a tick of its own.
- ``every`` seconds ticks at the multiples of ``every`` since 1970-01-01 00:00 UTC,
  whatever the time zone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from .exceptions import InvalidTaskOption

#: More than any zone's daylight-saving shift: how far wall-time order and instant
#: order may disagree.
SHIFT = timedelta(hours=3)
#: Wall times looked at for one tick at most (croniter gives up on impossible dates).
MAX_CANDIDATES = 1000
#: What ``catch_up`` may be: run every missed tick (up to ``catch_up_limit``), the newest
#: only, or none.
CATCH_UP = ("all", "latest", "none")
#: Cron aliases and whether their hour field is a wildcard.
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Timing:
    """When a schedule ticks: ``cron`` in ``timezone``, or every ``every`` seconds."""

    cron: str = ""
    every: int | None = None
    timezone: str = "UTC"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def expression(self) -> str:
        return ALIASES.get(self.cron.strip().lower(), self.cron.strip())

    @property
    def follows_elapsed_time(self) -> bool:
        """Whether the hour field is a wildcard (see the module text)."""
        return self.expression.split()[1].startswith("*")

    def describe(self) -> str:
        if self.every is not None:
            return f"every {self.every} s"
        return f"{self.cron} ({self.timezone})"


def check_timing(name: str, cron: Any, every: Any, timezone: Any) -> Timing:
    """A ``Timing`` from a schedule's fields, or ``InvalidTaskOption`` naming the schedule."""
    cron = "" if cron is None else cron
    if not isinstance(cron, str):
        raise InvalidTaskOption(f"Schedule {name!r}: cron={cron!r} must be a string.")
    if bool(cron.strip()) == (every is not None):
        raise InvalidTaskOption(
            f"Schedule {name!r} needs exactly one of cron (an expression such as "
            "'30 2 * * *') and every (seconds between ticks)."
        )
    if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
        raise InvalidTaskOption(
            f"Schedule {name!r}: every={every!r} must be a whole number of seconds >= 1."
        )
    if not isinstance(timezone, str) or not timezone:
        raise InvalidTaskOption(
            f"Schedule {name!r}: timezone={timezone!r} must be an IANA name like 'Europe/Oslo'."
        )
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidTaskOption(
            f"Schedule {name!r}: unknown timezone {timezone!r}; use an IANA name like "
            "'Europe/Oslo' or 'UTC'."
        ) from None
    timing = Timing(cron=cron.strip(), every=every, timezone=timezone)
    if every is None:
        _check_cron(name, timing.expression)
    return timing


def _check_cron(name: str, expression: str) -> None:
    fields = expression.split()
    if len(fields) != 5 or not croniter.is_valid(expression):
        raise InvalidTaskOption(
            f"Schedule {name!r}: cron={expression!r} is not a cron expression of five fields "
            "(minute hour day-of-month month day-of-week), such as '30 2 * * *' or '*/15 * * * *'."
        )
    try:
        croniter(expression, datetime(2000, 1, 1)).get_next(datetime)
    except (CroniterBadCronError, CroniterBadDateError):
        raise InvalidTaskOption(
            f"Schedule {name!r}: cron={expression!r} never matches a date."
        ) from None


def _instants(timing: Timing, wall: datetime) -> list[datetime]:
    """The instants (UTC) at which the naive local ``wall`` time ticks (module text)."""
    zone = timing.zone
    first = wall.replace(tzinfo=zone, fold=0)
    second = wall.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return [first.astimezone(UTC)]
    exists = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall
    if exists:  # it occurs twice
        if timing.follows_elapsed_time:
            return [first.astimezone(UTC), second.astimezone(UTC)]
        return [first.astimezone(UTC)]
    if timing.follows_elapsed_time:  # in the gap
        return []
    return [first.astimezone(UTC)]  # fold=0 in a gap: as far past the gap as into it


def _walls(timing: Timing, start: datetime, *, forward: bool) -> Iterator[datetime]:
    """Naive local times matching the expression, from the naive ``start`` on."""
    it = croniter(timing.expression, start)
    for _ in range(MAX_CANDIDATES):
        try:
            yield it.get_next(datetime) if forward else it.get_prev(datetime)
        except CroniterBadDateError:
            return


def _local(timing: Timing, instant: datetime) -> datetime:
    return instant.astimezone(timing.zone).replace(tzinfo=None)


def _steady(timing: Timing, instant: datetime) -> bool:
    """Whether the zone's offset is the same ``SHIFT`` either side of ``instant``: there,
    wall-time order is instant order, and no margin is needed."""
    zone = timing.zone
    return (instant - SHIFT).astimezone(zone).utcoffset() == (instant + SHIFT).astimezone(
        zone
    ).utcoffset()


def next_tick(timing: Timing, after: datetime) -> datetime:
    """The first tick strictly after the aware instant ``after`` (in UTC)."""
    if timing.every is not None:
        elapsed = int((after - EPOCH).total_seconds() // timing.every)
        return EPOCH + timedelta(seconds=(elapsed + 1) * timing.every)
    best: datetime | None = None
    start = _local(timing, after) - (timedelta(0) if _steady(timing, after) else SHIFT)
    for wall in _walls(timing, start, forward=True):
        if best is not None and wall > _local(timing, best) + (
            timedelta(0) if _steady(timing, best) else SHIFT
        ):
            break
        for instant in _instants(timing, wall):
            if instant > after and (best is None or instant < best):
                best = instant
    if best is None:
        raise InvalidTaskOption(f"cron={timing.cron!r} has no tick after {after.isoformat()}.")
    return best


def last_ticks(timing: Timing, after: datetime, until: datetime, limit: int) -> list[datetime]:
    """The newest ``limit`` ticks ``t`` with ``after < t <= until``, oldest first."""
    if limit < 1 or until <= after:
        return []
    if timing.every is not None:
        last = int((until - EPOCH).total_seconds() // timing.every)
        first = int((after - EPOCH).total_seconds() // timing.every) + 1
        first = max(first, last - limit + 1)
        return [EPOCH + timedelta(seconds=n * timing.every) for n in range(first, last + 1)]
    found: set[datetime] = set()
    floor = _local(timing, after) - SHIFT
    for wall in _walls(timing, _local(timing, until) + SHIFT, forward=False):
        if wall < floor:
            break
        if len(found) >= limit and wall < _local(timing, sorted(found)[-limit]) - SHIFT:
            break
        found.update(i for i in _instants(timing, wall) if after < i <= until)
    return sorted(found)[-limit:]


#: The keys of a schedule in ``BATCHTASKS["SCHEDULES"]`` and their defaults.
DECLARED_DEFAULTS: dict[str, Any] = {
    "cron": "",
    "every": None,
    "timezone": "UTC",
    "params": {},
    "catch_up": "latest",
    "catch_up_limit": 100,
    "overlap": False,
    "owner": None,
    "priority": None,
    "description": "",
    "enabled": True,
}


def check_declared(name: Any, options: Any, *, where: str = "") -> dict[str, Any]:
    """The field values of a schedule declared in ``BATCHTASKS["SCHEDULES"]`` (or where
    ``where`` says), checked (not the type nor its parameters: they need the registry)."""
    where = where or f"BATCHTASKS['SCHEDULES'][{name!r}]"
    if not isinstance(name, str) or not name or len(name) > 255:
        raise InvalidTaskOption(f"{where}: a schedule's name must be a string of 1 to 255 chars.")
    if not isinstance(options, dict):
        raise InvalidTaskOption(f"{where} must be a dict of options, not {options!r}.")
    unknown = sorted(set(options) - set(DECLARED_DEFAULTS) - {"type"})
    if unknown:
        raise InvalidTaskOption(
            f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; the keys are type, "
            f"{', '.join(DECLARED_DEFAULTS)}."
        )
    if not isinstance(options.get("type"), str) or not options["type"]:
        raise InvalidTaskOption(f"{where} needs 'type': the name of a registered task type.")
    values = {**DECLARED_DEFAULTS, **options}
    check_timing(name, values["cron"], values["every"], values["timezone"])
    _check_choices(where, values)
    return values


def _check_choices(where: str, values: dict[str, Any]) -> None:
    if values["catch_up"] not in CATCH_UP:
        raise InvalidTaskOption(
            f"{where}: catch_up={values['catch_up']!r} must be one of {', '.join(CATCH_UP)}."
        )
    limit = values["catch_up_limit"]
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise InvalidTaskOption(f"{where}: catch_up_limit={limit!r} must be an integer >= 1.")
    for flag in ("overlap", "enabled"):
        if not isinstance(values[flag], bool):
            raise InvalidTaskOption(f"{where}: {flag}={values[flag]!r} must be True or False.")
    if not isinstance(values["params"], dict):
        raise InvalidTaskOption(f"{where}: params={values['params']!r} must be a dict.")
    if not isinstance(values["description"], str) or len(values["description"]) > 500:
        raise InvalidTaskOption(f"{where}: description must be a string of at most 500 chars.")
    owner = values["owner"]
    if owner is not None and (isinstance(owner, bool) or not isinstance(owner, int | str)):
        raise InvalidTaskOption(f"{where}: owner={owner!r} must be a user's id or username.")
    priority = values["priority"]
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise InvalidTaskOption(f"{where}: priority={priority!r} must be an integer or None.")
