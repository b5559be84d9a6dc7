"""Checks of what a submit is given: each returns the clean value or raises
``InvalidTaskOption`` saying what to pass instead."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from ..core.exceptions import InvalidTaskOption
from ..core.states import PRIORITY_MAX, PRIORITY_MIN


def check_priority(priority: Any) -> int:
    """The priority as an int, or ``InvalidTaskOption`` if it is not one from -100 to 100."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidTaskOption(
            f"priority={priority!r} must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX} "
            "(see batchtasks.Priority)."
        )
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidTaskOption(
            f"priority={priority!r} is out of range; use {PRIORITY_MIN} to {PRIORITY_MAX} "
            "(Priority.UNIMPORTANT=-50, NORMAL=0, IMPORTANT=50, IMMEDIATE=100)."
        )
    return int(priority)


def check_text(name: str, value: Any, limit: int, *, optional: bool) -> str | None:
    """``value`` if it is a string of at most ``limit`` characters (or ``None`` when
    ``optional``), else ``InvalidTaskOption``."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidTaskOption(f"{name}={value!r} must be a string.")
    if len(value) > limit:
        raise InvalidTaskOption(f"{name} is {len(value)} characters; the limit is {limit}.")
    if "\x00" in value:
        raise InvalidTaskOption(
            f"{name}={value!r} holds a NUL character, which no text column can."
        )
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise InvalidTaskOption(
            f"{name}={value!r} is not valid Unicode ({exc.reason} at character {exc.start})."
        ) from exc
    return value


def check_run_after(run_after: Any) -> datetime | timedelta | None:
    """An aware datetime, a delay (counted later from the database's clock) or ``None``."""
    if run_after is None or isinstance(run_after, timedelta):
        return run_after
    if isinstance(run_after, datetime):
        if settings.USE_TZ and timezone.is_naive(run_after):
            raise InvalidTaskOption(
                f"run_after={run_after!r} is a naive datetime; pass an aware one "
                "(django.utils.timezone.now() + timedelta(...)) or a timedelta."
            )
        return run_after
    raise InvalidTaskOption(f"run_after={run_after!r} must be a datetime, a timedelta or None.")


def check_owner(owner: Any) -> int | None:
    """The primary key of a saved user; ``None`` for no owner or an anonymous user."""
    if owner is None or getattr(owner, "is_anonymous", False):
        return None
    pk = getattr(owner, "pk", None)
    if pk is None:
        raise InvalidTaskOption(
            f"owner={owner!r} must be a saved user (an instance of the user model) or None."
        )
    return int(pk)
