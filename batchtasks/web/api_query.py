"""The task list's query string: filters, the keyset cursor, and the page it selects."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q, QuerySet
from django.http import HttpRequest, QueryDict
from django.utils.translation import gettext as _

from ..core.states import TaskState
from ..models import BatchTask
from .problems import FieldError, Problem
from .serialize import BIGINT_MAX, Viewer, parse_timestamp, timestamp

LIMIT_DEFAULT, LIMIT_MAX = 50, 200
IDS_MAX = 100
NUMBER = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the last task's creation time and id (the list's sort key)."""

    created_at: datetime
    id: int

    def token(self) -> str:
        raw = f"{timestamp(self.created_at)}|{self.id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def parse(cls, token: str) -> Cursor | None:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        except (binascii.Error, UnicodeError, ValueError):
            return None
        when, _sep, number = raw.partition("|")
        created_at = parse_timestamp(when)
        if created_at is None or not NUMBER.fullmatch(number) or int(number) > BIGINT_MAX:
            return None
        return cls(created_at, int(number))


@dataclass(frozen=True)
class ListQuery:
    """A checked query of GET api/tasks/."""

    states: tuple[str, ...] = ()
    type: str | None = None
    since: datetime | None = None
    ids: tuple[int, ...] = ()
    limit: int = LIMIT_DEFAULT
    cursor: Cursor | None = None
    owner: str | None = None
    all: bool = False


def _items(query: QueryDict, name: str) -> list[str]:
    """The values of a repeatable parameter that may also be a comma list."""
    return [item.strip() for value in query.getlist(name) for item in value.split(",")]


def _one(query: QueryDict, name: str, errors: list[FieldError]) -> str | None:
    """The parameter's value; empty counts as not given."""
    value = query.get(name) or None
    if value is not None and "\x00" in value:
        errors.append(
            FieldError(name, _("%(field)s must not contain NUL characters.") % {"field": name})
        )
        return None
    return value


def _states(query: QueryDict, errors: list[FieldError]) -> tuple[str, ...]:
    states = [s for s in _items(query, "state") if s]
    bad = [s for s in states if s not in TaskState.values]
    if bad:
        errors.append(
            FieldError(
                "state",
                _("Unknown state(s) %(states)s; use %(known)s.")
                % {"states": repr(bad), "known": ", ".join(TaskState.values)},
            )
        )
    return tuple(states)


def _ids(query: QueryDict, errors: list[FieldError]) -> tuple[int, ...]:
    items = [i for i in _items(query, "id") if i]
    if not all(NUMBER.fullmatch(i) and 1 <= int(i) <= BIGINT_MAX for i in items):
        errors.append(FieldError("id", _("id must be task ids (positive integers).")))
        return ()
    if len(items) > IDS_MAX:
        errors.append(
            FieldError(
                "id", _("At most %(max)s ids at once; ask for the rest next.") % {"max": IDS_MAX}
            )
        )
    return tuple(int(i) for i in items)


def _limit(query: QueryDict, errors: list[FieldError]) -> int:
    text = query.get("limit")
    if not text:
        return LIMIT_DEFAULT
    if not re.fullmatch(r"[0-9]{1,3}", text) or not 1 <= int(text) <= LIMIT_MAX:
        errors.append(
            FieldError(
                "limit", _("limit must be an integer from 1 to %(max)s.") % {"max": LIMIT_MAX}
            )
        )
        return LIMIT_DEFAULT
    return int(text)


def _flag(query: QueryDict, name: str, errors: list[FieldError]) -> bool:
    text = (query.get(name) or "0").lower()
    if text not in ("0", "1", "true", "false"):
        errors.append(FieldError(name, _("%(field)s must be 1 or 0.") % {"field": name}))
    return text in ("1", "true")


def parse_list_query(query: QueryDict) -> ListQuery:
    """The filters of a list request, or the invalid-request problem naming each bad one."""
    errors: list[FieldError] = []
    since = cursor = None
    since_text = _one(query, "since", errors)
    if since_text is not None and (since := parse_timestamp(since_text)) is None:
        errors.append(
            FieldError(
                "since",
                _(
                    "since must be an ISO 8601 time with an offset, such as "
                    "2026-11-30T13:00:00Z (in a URL, write + as %2B)."
                ),
            )
        )
    token = _one(query, "cursor", errors)
    if token is not None and (cursor := Cursor.parse(token)) is None:
        errors.append(FieldError("cursor", _("cursor must be a 'next' link's cursor, unchanged.")))
    parsed = ListQuery(
        states=_states(query, errors),
        type=_one(query, "type", errors),
        since=since,
        ids=_ids(query, errors),
        limit=_limit(query, errors),
        cursor=cursor,
        owner=_one(query, "owner", errors),
        all=_flag(query, "all", errors),
    )
    if errors:
        raise Problem("invalid-request", " ".join(e.message for e in errors), errors)
    return parsed


def select(query: ListQuery, viewer: Viewer) -> QuerySet[BatchTask]:
    """The tasks of one page (and one more, to tell whether there is a next page)."""
    if (query.owner is not None or query.all) and not viewer.view_all:
        raise Problem(
            "permission-denied",
            _("owner= and all= need the permission batchtasks.view_all_batchtasks."),
        )
    if query.owner is not None:
        tasks: QuerySet[BatchTask] = viewer.rows().owned_by_username(query.owner)
    else:
        tasks = viewer.rows() if query.all else viewer.own_tasks()
    if query.states:
        tasks = tasks.filter(state__in=query.states)
    if query.type is not None:
        tasks = tasks.filter(definition__name=query.type)
    if query.since is not None:
        tasks = tasks.filter(updated_at__gt=query.since)
    if query.ids:
        tasks = tasks.filter(pk__in=query.ids)
    if query.cursor is not None:
        at = query.cursor.created_at
        # The redundant ``created_at <= at`` lets the index seek to the page (an index
        # condition) instead of filtering every row of the pages before.
        tasks = tasks.filter(
            Q(created_at__lt=at) | Q(created_at=at, pk__lt=query.cursor.id), created_at__lte=at
        )
    return tasks.order_by("-created_at", "-pk")[: query.limit + 1]


def next_link(request: HttpRequest, page: list[BatchTask], query: ListQuery) -> str | None:
    """The URL of the page after ``page`` (which holds up to one task more than the limit)."""
    if len(page) <= query.limit:
        return None
    last = page[query.limit - 1]
    params = request.GET.copy()
    params["cursor"] = Cursor(last.created_at, last.pk).token()
    return f"{request.path}?{params.urlencode()}"
