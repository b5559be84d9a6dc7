"""Checks of what a submit is given: each returns the clean value or raises
``InvalidTaskOption`` saying what to pass instead."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext as _

from ..core.exceptions import InvalidTaskOption
from ..core.states import PRIORITY_MAX, PRIORITY_MIN


def check_priority(priority: Any) -> int:
    """The priority as an int, or ``InvalidTaskOption`` if it is not one from -100 to 100."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidTaskOption(
            _(
                "priority=%(value)s must be an integer from %(min)s to %(max)s "
                "(see batchtasks.Priority)."
            )
            % {"value": repr(priority), "min": PRIORITY_MIN, "max": PRIORITY_MAX}
        )
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidTaskOption(
            _(
                "priority=%(value)s is out of range; use %(min)s to %(max)s "
                "(Priority.UNIMPORTANT=-50, NORMAL=0, IMPORTANT=50, IMMEDIATE=100)."
            )
            % {"value": repr(priority), "min": PRIORITY_MIN, "max": PRIORITY_MAX}
        )
    return int(priority)


def check_text(name: str, value: Any, limit: int, *, optional: bool) -> str | None:
    """``value`` if it is a string of at most ``limit`` characters (or ``None`` when
    ``optional``), else ``InvalidTaskOption``."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidTaskOption(
            _("%(name)s=%(value)s must be a string.") % {"name": name, "value": repr(value)}
        )
    if len(value) > limit:
        raise InvalidTaskOption(
            _("%(name)s is %(length)s characters; the limit is %(limit)s.")
            % {"name": name, "length": len(value), "limit": limit}
        )
    if "\x00" in value:
        raise InvalidTaskOption(
            _("%(name)s=%(value)s holds a NUL character, which no text column can.")
            % {"name": name, "value": repr(value)}
        )
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise InvalidTaskOption(
            _("%(name)s=%(value)s is not valid Unicode (%(error)s at character %(position)s).")
            % {"name": name, "value": repr(value), "error": exc.reason, "position": exc.start}
        ) from exc
    return value


def check_run_after(run_after: Any) -> datetime | timedelta | None:
    """An aware datetime, a delay (counted later from the database's clock) or ``None``."""
    if run_after is None or isinstance(run_after, timedelta):
        return run_after
    if isinstance(run_after, datetime):
        if settings.USE_TZ and timezone.is_naive(run_after):
            raise InvalidTaskOption(
                _(
                    "run_after=%(value)s is a naive datetime; pass an aware one "
                    "(django.utils.timezone.now() + timedelta(...)) or a timedelta."
                )
                % {"value": repr(run_after)}
            )
        return run_after
    raise InvalidTaskOption(
        _("run_after=%(value)s must be a datetime, a timedelta or None.")
        % {"value": repr(run_after)}
    )


def check_owner(owner: Any) -> int | None:
    """The primary key of a saved user; ``None`` for no owner or an anonymous user."""
    if owner is None or getattr(owner, "is_anonymous", False):
        return None
    pk = getattr(owner, "pk", None)
    if pk is None:
        raise InvalidTaskOption(
            _("owner=%(value)s must be a saved user (an instance of the user model) or None.")
            % {"value": repr(owner)}
        )
    return int(pk)
