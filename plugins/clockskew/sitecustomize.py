"""A wall clock off by an offset, for the chaos test's clock_skew scenario (the Python
level's libfaketime: Debian bookworm's 0.9.10 breaks time.sleep and Event.wait of
Python 3.11).

Python imports ``sitecustomize`` at start-up from the first folder of ``sys.path`` that
has one; docker/compose.chaos.yaml puts this folder on the chaos workers' PYTHONPATH,
and nothing else does. The offset, in seconds (``+3600`` is an hour ahead), is read from
``BATCHTASKS_CLOCK_OFFSET_FILE`` (default /tmp/batchtasks-clock-offset), again at most
once a second by the monotonic clock, so that ``docker exec`` can change it while the
worker runs; no file, or no number in it, is no offset.

Shifted: ``time.time``, ``time.time_ns``, ``datetime.datetime.now`` / ``utcnow`` /
``today`` and ``datetime.date.today`` (through classes put in the ``datetime`` module
before anything imports from it; the real classes' instances, which C code such as
psycopg makes, still pass ``isinstance`` and pickle). Not shifted: the monotonic clocks, as a
host's wall clock being wrong does not touch them, and the files' times (the kernel's).
"""

from __future__ import annotations

import copyreg
import datetime as _datetime
import os
import time as _time
from typing import Any

OFFSET_FILE = os.environ.get("BATCHTASKS_CLOCK_OFFSET_FILE", "/tmp/batchtasks-clock-offset")
#: How long an offset read is believed (monotonic seconds).
REREAD_AFTER = 1.0

_real_time = _time.time
_real_time_ns = _time.time_ns
_RealDate = _datetime.date
_RealDatetime = _datetime.datetime
_read: list[float] = [0.0, -REREAD_AFTER - 1.0]  # the offset, and when it was read


def offset() -> float:
    """The offset in seconds, from the file (at most once a second)."""
    now = _time.monotonic()
    if now - _read[1] >= REREAD_AFTER:
        try:
            with open(OFFSET_FILE) as file:
                _read[0] = float(file.read().strip() or 0)
        except (OSError, ValueError):
            _read[0] = 0.0
        _read[1] = now
    return _read[0]


def time() -> float:
    return _real_time() + offset()


def time_ns() -> int:
    return _real_time_ns() + round(offset() * 1e9)


class _DateType(type):
    """Instances and subclasses of the real ``date`` count as the shifted class's."""

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, _RealDate)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, _RealDate)


class _DatetimeType(_DateType):
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, _RealDatetime)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, _RealDatetime)


class date(_RealDate, metaclass=_DateType):
    @classmethod
    def today(cls) -> Any:
        return _RealDate.fromtimestamp(time())


class datetime(_RealDatetime, metaclass=_DatetimeType):
    @classmethod
    def now(cls, tz: _datetime.tzinfo | None = None) -> Any:
        return _RealDatetime.fromtimestamp(time(), tz)

    @classmethod
    def today(cls) -> Any:
        return _RealDatetime.fromtimestamp(time())

    @classmethod
    def utcnow(cls) -> Any:
        return _RealDatetime.fromtimestamp(time(), _datetime.UTC).replace(tzinfo=None)


def _reduce(value: _RealDate) -> tuple[type, tuple[Any, ...]]:
    """Pickle a real ``date`` or ``datetime`` (psycopg's, say) as ``datetime.date`` or
    ``datetime.datetime``: the hook's classes here, the real ones where it is absent."""
    shifted = datetime if isinstance(value, _RealDatetime) else date
    return shifted, value.__reduce__()[1]  # the state the real class pickles


# Pickle names the classes by module and name, which must lead back to them.
for _class, _name in ((date, "date"), (datetime, "datetime")):
    _class.__module__, _class.__qualname__ = "datetime", _name
    copyreg.pickle(_class.__mro__[1], _reduce)
_time.time = time
_time.time_ns = time_ns
_datetime.date = date  # type: ignore[misc]
_datetime.datetime = datetime  # type: ignore[misc]
