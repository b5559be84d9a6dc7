"""Push for the running-tasks indicator: the poll's answer as server-sent events.

An option, off by default (``INDICATOR_PUSH``): a stream holds its connection for as
long as the tab is open, which only an ASGI server can afford (under gunicorn's sync
workers one open tab would pin a whole worker), so polling stays the default. With it on
and under ASGI, ``GET api/tasks/active/events/`` streams ``text/event-stream``:

* every ``INDICATOR_PUSH_INTERVAL`` seconds, the poll token's one query
  (batchtasks.web.indicator ``look``): the session still there, the user active with the
  same password hash, the digest of their active set;
* event ``tasks`` with the poll's JSON whenever its ETag changed, the ETag as the event's
  id (a reconnecting ``EventSource`` sends it back as ``Last-Event-ID``, so an unchanged
  answer is not sent again), and a comment line when idle so proxies keep the stream;
* event ``signed-out`` and the end of the stream once the caller has signed out.

Without ASGI, or where ``look`` cannot run (sessions outside PostgreSQL), the answer is
the not-found problem and the indicator polls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user
from django.core.handlers.asgi import ASGIRequest
from django.db import close_old_connections
from django.http import HttpRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils.translation import gettext as _

from ..core.conf import get_settings
from . import indicator
from .auth import challenge
from .problems import Problem

#: Seconds of silence after which an idle stream sends a comment line.
KEEP_ALIVE_SECONDS = 15.0
#: The threads that run every stream's queries, and so the database connections they hold
#: (a ``sync_to_async`` per request would hold one per open stream: 200 tabs, 200
#: connections, more than PostgreSQL's default ``max_connections``).
DATABASE_THREADS = 2
_executor = ThreadPoolExecutor(DATABASE_THREADS, thread_name_prefix="batchtasks-push")


def _look(session_key: str, user_id: int, binding: str, recent: int) -> indicator.Look:
    close_old_connections()  # this thread serves no request that would do it
    return indicator.look(session_key, user_id, binding, recent)


def _answer(user: Any) -> tuple[bytes, str]:
    close_old_connections()
    return indicator.full_answer(user)


def _signed_in(request: HttpRequest) -> Any:
    close_old_connections()
    return get_user(request)


def _user(user: Any) -> Any:
    close_old_connections()
    return type(user).objects.get(pk=user.pk)


def _in_thread(func: Any) -> Any:
    return sync_to_async(func, thread_sensitive=False, executor=_executor)


def enabled(request: HttpRequest | None) -> bool:
    """Whether push is on here and ``request`` came through an ASGI server."""
    if not isinstance(request, ASGIRequest) or not get_settings().INDICATOR_PUSH:
        return False
    return indicator.can_look()


async def events(request: HttpRequest) -> HttpResponseBase:
    """The indicator's stream of answers (server-sent events); see the module's text."""
    try:
        if request.method != "GET":
            raise Problem(
                "method-not-allowed",
                _("%(method)s is not allowed here; use %(allowed)s.")
                % {"method": request.method, "allowed": "GET"},
            )
        if not await sync_to_async(enabled)(request):
            raise Problem("not-found", _("Push is off here (INDICATOR_PUSH, an ASGI server)."))
        user = await _in_thread(_signed_in)(request)
        session_key = request.session.session_key
        if not user.is_authenticated or not user.is_active or not session_key:
            raise challenge(request)
    except Problem as problem:
        return problem.response()
    binding = indicator.binding_of(session_key, user)
    last = request.headers.get("Last-Event-ID", "")
    response = StreamingHttpResponse(
        stream(user, session_key, binding, last), content_type="text/event-stream"
    )
    response["Cache-Control"] = "private, no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


async def stream(user: Any, session_key: str, binding: str, last: str) -> AsyncIterator[bytes]:
    """The events of one stream, until the caller signs out or the client goes away."""
    settings = get_settings()
    interval = max(0.05, settings.INDICATOR_PUSH_INTERVAL)
    quiet = 0.0
    while True:
        seen = await _in_thread(_look)(
            session_key, user.pk, binding, settings.INDICATOR_RECENT_SECONDS
        )
        if seen.watcher is None:
            yield b"event: signed-out\ndata: {}\n\n"
            return
        if seen.watcher != indicator.Watcher.of(user):  # renamed, or made staff or not
            user = await _in_thread(_user)(user)
        tag = indicator.etag(seen.watcher, seen.digest, settings.INDICATOR_RECENT_SECONDS)
        if tag != last:
            body, last = await _in_thread(_answer)(user)
            yield b"id: " + last.encode() + b"\nevent: tasks\ndata: " + body + b"\n\n"
            quiet = 0.0
        elif quiet >= KEEP_ALIVE_SECONDS:
            yield b": idle\n\n"
            quiet = 0.0
        await asyncio.sleep(interval)
        quiet += interval
