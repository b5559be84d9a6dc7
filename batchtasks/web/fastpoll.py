"""The indicator's unchanged poll answered ahead of Django's handler (a WSGI wrapper).

With the poll token (batchtasks.web.indicator) a 304 costs one query, yet through Django it
still pays for the handler, every middleware and the response: most of its CPU. Wrapped
around the WSGI application (``application = FastPoll(get_wsgi_application())``), this
answers exactly one shape of request itself: a ``GET`` of the poll's URL (its
``PATH_INFO``, as Django resolves it: ``SCRIPT_NAME``/``FORCE_SCRIPT_NAME`` play no part)
with ``If-None-Match`` and a poll token cookie, no ``Authorization`` header, whose token is
valid and unexpired and whose ETag is unchanged — decided by the same code and the same
one query as the view's token shortcut (``indicator.token_etag``: the session row still
there, the user active with the same password hash, the digest of their active set). The
304 carries what the full path's does (``ETag``, ``Vary``, ``Cache-Control``, and the
headers of the middleware below). Every other request, and any of these that the token
does not answer with a 304, goes to the wrapped application unchanged.

It steps aside unless every middleware in ``MIDDLEWARE`` is one whose effect on this
request it knows: ``REPLAYED`` (it runs their hooks: an HTTPS redirect, a host that
``ALLOWED_HOSTS`` refuses or a redirect of ``CommonMiddleware`` go to Django), ``INERT``
(nothing for this 304), or one named in ``trusted`` by the project that checked it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import unquote

from django.conf import settings
from django.core import signals
from django.core.exceptions import SuspiciousOperation
from django.core.handlers.wsgi import WSGIRequest, get_path_info
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.urls import NoReverseMatch, get_script_prefix, reverse
from django.utils.module_loading import import_string

from . import indicator
from .auth import mark_private

logger = logging.getLogger(__name__)

#: Middleware whose hooks the fast path runs, as Django would, on the request and the 304.
REPLAYED = (
    "django.middleware.security.SecurityMiddleware",
    # Activates the request's language (which the ETag names) and adds Content-Language
    # and Vary: Accept-Language to the 304.
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
)
#: Middleware that does nothing to this request's 304: it serves other paths (WhiteNoise),
#: or prepares what only a view reads (the session, the user, CSRF, messages).
INERT = frozenset(
    {
        "whitenoise.middleware.WhiteNoiseMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
    }
)

RequestHook = Callable[[HttpRequest], HttpResponse | None]
ResponseHook = Callable[[HttpRequest, HttpResponse], HttpResponse]


@dataclass(frozen=True)
class Plan:
    """What the fast path checks and runs, decided once from the settings."""

    path_info: str
    request_hooks: tuple[RequestHook, ...]
    response_hooks: tuple[ResponseHook, ...]  # in the order Django runs them: inner first


def _never_called(request: HttpRequest) -> HttpResponse:  # pragma: no cover
    raise AssertionError("the fast path calls the middleware's hooks, never the middleware")


@cache
def plan(trusted: frozenset[str]) -> Plan | None:
    """The fast path's plan, or ``None`` where it must step aside (kept until settings
    change: it is on the path of every request)."""
    unknown = [m for m in settings.MIDDLEWARE if m not in REPLAYED and m not in INERT]
    if [m for m in unknown if m not in trusted] or not indicator.can_look():
        return None
    try:
        url = reverse("batchtasks:api-active")
    except NoReverseMatch:
        return None
    middleware = [import_string(m)(_never_called) for m in settings.MIDDLEWARE if m in REPLAYED]
    return Plan(
        path_info="/" + unquote(url.removeprefix(get_script_prefix())),
        request_hooks=tuple(m.process_request for m in middleware if hasattr(m, "process_request")),
        response_hooks=tuple(
            m.process_response for m in reversed(middleware) if hasattr(m, "process_response")
        ),
    )


@receiver(setting_changed)
def _forget(**kwargs: Any) -> None:
    plan.cache_clear()


def not_modified(request: HttpRequest, plan: Plan) -> HttpResponse | None:
    """The 304 of an unchanged poll decided by its token, or ``None``: ask Django."""
    for hook in plan.request_hooks:
        if hook(request) is not None:  # a redirect or a refusal: Django's to give
            return None
    decided = indicator.token_etag(request.META, request.COOKIES)
    if decided is None:
        return None
    tag, unchanged = decided
    if not unchanged:
        request.META[indicator.CHANGED] = True  # the view need not ask again
        return None
    response = indicator.not_modified(tag)
    mark_private(response)
    for response_hook in plan.response_hooks:
        response = response_hook(request, response)
    return response


class FastPoll:
    """WSGI wrapper: answers the indicator's unchanged poll (304) by its token before
    Django's handler; everything else goes to ``application``. ``trusted``: dotted paths
    of further middleware that may be skipped for this 304."""

    def __init__(self, application: Any, trusted: Iterable[str] = ()) -> None:
        self.application = application
        self.trusted = frozenset(trusted)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if (
            environ.get("REQUEST_METHOD") == "GET"
            and "HTTP_IF_NONE_MATCH" in environ
            and indicator.TOKEN_COOKIE in environ.get("HTTP_COOKIE", "")
        ):
            decided = plan(self.trusted)
            if decided is not None and get_path_info(environ) == decided.path_info:
                response = self._answer(environ, decided)
                if response is not None:
                    start_response(
                        f"{response.status_code} {response.reason_phrase}", [*response.items()]
                    )
                    return []
        return self.application(environ, start_response)

    def _answer(self, environ: dict[str, Any], decided: Plan) -> HttpResponse | None:
        """The 304 or ``None``, between the signals Django sends around a request (they
        close connections that broke or outlived ``CONN_MAX_AGE``, as for any request)."""
        signals.request_started.send(sender=type(self), environ=environ)
        try:
            return not_modified(WSGIRequest(environ), decided)
        except SuspiciousOperation:  # a disallowed host...: Django answers and logs it
            return None
        except Exception:
            logger.exception("fastpoll fell_through=error path=%s", environ.get("PATH_INFO"))
            return None
        finally:
            signals.request_finished.send(sender=type(self))
