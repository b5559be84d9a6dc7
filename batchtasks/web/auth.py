"""Who is calling the API: a session (browsers, CSRF-checked), an API token
(``Authorization: Bearer``, scripts) or HTTP Basic (scripts, kept for compatibility).

``api_view`` is the gate every API view passes: the method, then the caller, then for
unsafe methods the token's scope, the CSRF check (session callers, and Basic ones a
browser sent) and a JSON body; a ``Problem`` raised anywhere becomes its response.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from django.contrib.auth import authenticate
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils.cache import patch_cache_control, patch_vary_headers
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt

from ..models import TokenScope
from ..services import tokens
from .problems import Problem

logger = logging.getLogger(__name__)

REALM = "batchtasks"
JSON = "application/json"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")

View = Callable[..., HttpResponse]


@dataclass(frozen=True)
class Caller:
    """The signed-in user of a request and how they signed in."""

    user: Any
    basic: bool
    #: The API token's scope; None for a session or Basic caller (all the user may do).
    scope: str | None = None


class _CsrfCheck(CsrfViewMiddleware):
    """Django's own CSRF check, giving back the reason instead of its HTML 403 page."""

    def _reject(self, request: HttpRequest, reason: str) -> Any:
        return reason


def _no_response(request: HttpRequest) -> HttpResponse:  # pragma: no cover - never called
    raise AssertionError("the CSRF check never calls the view")


def check_csrf(request: HttpRequest) -> None:
    """Raise the csrf-failed problem unless the request passes Django's CSRF check."""
    check = _CsrfCheck(_no_response)
    check.process_request(request)
    reason = check.process_view(request, None, (), {})  # type: ignore[arg-type]
    if reason:
        logger.warning("api csrf_failed path=%s reason=%s", request.path, reason)
        raise Problem("csrf-failed", _("CSRF verification failed: %(reason)s") % {"reason": reason})


def challenge(request: HttpRequest) -> Problem:
    """The 401 problem; scripts of our own pages get a challenge browsers do not prompt for."""
    scheme = "Session" if request.headers.get("X-Requested-With") == "XMLHttpRequest" else "Basic"
    return Problem(
        "not-authenticated",
        _("Sign in first, or send HTTP Basic credentials (Authorization: Basic …)."),
        headers={"WWW-Authenticate": f'{scheme} realm="{REALM}"'},
    )


def bearer_challenge(detail: str, error: str = "invalid_token") -> Problem:
    """The 401 problem for a Bearer token that is no live token, or not taken here."""
    return Problem(
        "not-authenticated",
        detail,
        headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="{error}"'},
    )


def _by_token(request: HttpRequest, value: str, *, allowed: bool) -> Caller:
    """The caller of an ``Authorization: Bearer`` header, or the not-authenticated problem."""
    if not allowed:
        raise bearer_challenge(
            _("API tokens are not accepted here (this URL serves signed-in pages); sign in."),
            error="invalid_request",
        )
    token = tokens.authenticate(value.strip())
    if token is None:
        raise bearer_challenge(_("The API token is unknown, expired or revoked."))
    return Caller(token.user, basic=False, scope=token.scope)


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """The username and password of an ``Authorization: Basic`` header, if well formed."""
    try:
        raw = base64.b64decode(header.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    username, colon, password = text.partition(":")
    # PostgreSQL text cannot hold NUL: such a name cannot be a user and must not reach SQL.
    if not colon or "\x00" in text:
        return None
    return username, password


def identify(request: HttpRequest, *, bearer: bool = True) -> Caller:
    """The caller, or the not-authenticated problem; a token or Basic credentials win over
    a session. ``bearer=False``: a token is refused (the views of signed-in pages)."""
    scheme, _sep, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return _by_token(request, value, allowed=bearer)
    if scheme.lower() == "basic":
        credentials = _basic_credentials(value.strip())
        user = None
        if credentials is not None:
            user = authenticate(request, username=credentials[0], password=credentials[1])
        if user is None or not user.is_active:
            raise challenge(request)
        return Caller(user, basic=True)
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not user.is_active:
        raise challenge(request)
    return Caller(user, basic=False)


def needs_csrf(request: HttpRequest, caller: Caller) -> bool:
    """Whether an unsafe request must pass the CSRF check: a session's always; a token's
    never (no browser sends one on its own); Basic credentials' only when a browser sent
    them, since a browser that once answered a Basic prompt sends them again on its own,
    from any site's forms (scripts send neither ``Sec-Fetch-Site`` nor ``Origin``)."""
    if caller.scope is not None:
        return False
    if not caller.basic:
        return True
    site = request.headers.get("Sec-Fetch-Site")
    return site not in (None, "none") or "Origin" in request.headers


def check_json_body(request: HttpRequest) -> None:
    """Raise the unsupported-media-type problem unless an unsafe request's body is declared
    ``application/json`` (parameters such as a charset allowed) or there is none at all.

    A form of another site can send only ``text/plain``, urlencoded or multipart bodies,
    and always says so; where the CSRF check does not apply (Basic credentials from a
    browser that sends neither ``Origin`` nor ``Sec-Fetch-Site``), this keeps it out.
    """
    declared = request.META.get("CONTENT_TYPE")
    if not declared and request.META.get("CONTENT_LENGTH") in (None, "", "0"):
        return  # a POST without a body: `curl -X POST …/cancel/`
    if request.content_type == JSON:
        return
    raise Problem(
        "unsupported-media-type",
        _("The body must be JSON sent as Content-Type: %(expected)s, not %(declared)s.")
        % {"expected": JSON, "declared": repr(declared or "none")},
    )


def check_scope(caller: Caller) -> None:
    """Raise the insufficient-scope problem for a read token's unsafe request: every unsafe
    method of the API submits, cancels or retries."""
    if caller.scope == TokenScope.READ:
        raise Problem(
            "insufficient-scope",
            _(
                "This API token may only read (scope read); submitting, cancelling and "
                "retrying need a token of scope submit."
            ),
            headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="insufficient_scope"'},
        )


def admit(request: HttpRequest, *, bearer: bool = True) -> None:
    """Identify the caller as ``request.user``; for unsafe methods check the token's scope,
    CSRF (where it applies) and the JSON body. Raises the problem that refuses the request."""
    caller = identify(request, bearer=bearer)
    request.user = caller.user
    if request.method not in SAFE_METHODS:
        check_scope(caller)
        if needs_csrf(request, caller):
            check_csrf(request)
        check_json_body(request)


def mark_private(response: HttpResponse) -> None:
    """Say that ``response`` depends on who asks and must be revalidated before reuse."""
    patch_vary_headers(response, ("Cookie", "Authorization"))
    patch_cache_control(response, private=True, no_cache=True)


def api_view(
    *methods: str,
    public: bool = False,
    shortcut: Callable[[HttpRequest], HttpResponse | None] | None = None,
    bearer: bool = True,
) -> Callable[[View], View]:
    """Wrap a view of the API: allowed methods, a signed-in caller (unless ``public``;
    by an API token too unless ``bearer`` is False), the token's scope, the CSRF check
    and a JSON body for unsafe methods, and problems as responses.

    ``shortcut`` may answer a safe request before the caller is identified (the
    indicator's 304 by its poll token); when it returns ``None`` the view runs as usual.
    """

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                if request.method not in methods:
                    raise Problem(
                        "method-not-allowed",
                        _("%(method)s is not allowed here; use %(allowed)s.")
                        % {"method": request.method, "allowed": " / ".join(methods)},
                        headers={"Allow": ", ".join(methods)},
                    )
                answer = None
                if shortcut is not None and request.method in SAFE_METHODS:
                    answer = shortcut(request)
                if answer is None and not public:
                    admit(request, bearer=bearer)
                response = answer if answer is not None else view(request, *args, **kwargs)
            except Problem as problem:
                response = problem.response()
            if not public:
                mark_private(response)
            return response

        return csrf_exempt(wrapper)

    return decorate
