"""The indicator's unchanged poll answered ahead of Django (batchtasks.web.fastpoll): a 304
only while the token, the session, the user and the caller's own tasks say so; anything
else reaches Django as if the wrapper were not there."""

from __future__ import annotations

import logging
import time
from http.cookies import SimpleCookie
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from psycopg.pq import TransactionStatus

from batchtasks import BatchTask, transitions
from batchtasks.web import fastpoll, indicator
from tests.accounts import basic
from tests.apitools import running

# The wrapper sends request_started/finished and so closes connections as a server's
# requests do: the rows must be committed, not inside a test's transaction.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_passwords")]

ACTIVE = reverse("batchtasks:api-active")
TOKEN = indicator.TOKEN_COOKIE


class Server:
    """The reference project's WSGI application called as a server calls it; counts the
    requests that reached Django."""

    def __init__(self, trusted: tuple[str, ...] = ()) -> None:
        self.django, self.reached = WSGIHandler(), 0
        self.app = fastpoll.FastPoll(self._counted, trusted)

    def _counted(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.reached += 1
        return self.django(environ, start_response)

    def call(self, app: Any, environ: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        seen: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> None:
            seen.update(status=int(status.split(maxsplit=1)[0]), headers=headers)

        chunks = app(environ, start_response)
        try:
            body = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()  # Django's request_finished, as a server does
        return seen["status"], dict(seen["headers"]), body


class Tab:
    """A browser tab's indicator: keeps its cookies and last ETag, polls the server."""

    def __init__(self, server: Server, client: Client) -> None:
        self.server, self.etag = server, ""
        self.cookies = {name: morsel.value for name, morsel in client.cookies.items()}
        self.status, self.headers, self.body, self.fast = 0, {}, b"", False

    def environ(self, method: str = "GET", path: str = ACTIVE, **extra: Any) -> dict[str, Any]:
        headers = {"HTTP_IF_NONE_MATCH": self.etag} if self.etag else {}
        environ = RequestFactory().generic(method, path, **{**headers, **extra}).environ
        environ["HTTP_COOKIE"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return environ

    def poll(self, app: Any = None, **extra: Any) -> int:
        """One poll; notes whether the wrapper answered it without Django."""
        before = self.server.reached
        answer = self.server.call(app or self.server.app, self.environ(**extra))
        self.status, self.headers, self.body = answer
        self.fast = self.server.reached == before and app is None
        if self.status == 200:
            self.etag = self.headers.get("ETag", self.etag)
        cookie = SimpleCookie(self.headers.get("Set-Cookie", ""))
        for name, morsel in cookie.items():
            self.cookies[name] = morsel.value
        return self.status


@pytest.fixture
def server() -> Server:
    return Server()


@pytest.fixture
def tab(server: Server, client: Client, alice: Any) -> Tab:
    """Alice's tab after its first poll (a 200 through Django that set the token)."""
    client.force_login(alice)
    tab = Tab(server, client)
    assert tab.poll() == 200 and not tab.fast and TOKEN in tab.cookies
    return tab


def test_an_unchanged_poll_gets_the_full_paths_304_without_django(tab: Tab) -> None:
    assert tab.poll() == 304 and tab.fast and tab.body == b""
    fast = tab.headers

    assert tab.poll(app=tab.server.django) == 304  # the same request, Django alone

    assert fast == tab.headers
    assert fast["ETag"] == tab.etag and "Set-Cookie" not in fast
    assert fast["Cache-Control"] == "private, no-cache" and "Cookie" in fast["Vary"]


def test_the_language_of_the_request_is_part_of_the_answer(tab: Tab, settings: Any) -> None:
    assert "django.middleware.locale.LocaleMiddleware" in settings.MIDDLEWARE
    english = tab.etag
    assert tab.poll(HTTP_ACCEPT_LANGUAGE="en") == 304 and tab.fast
    assert tab.headers["Content-Language"] == "en" and "Accept-Language" in tab.headers["Vary"]

    # The same tab asking in Norwegian: the English ETag does not answer it.
    assert tab.poll(HTTP_ACCEPT_LANGUAGE="nb") == 200 and tab.etag != english
    assert tab.headers["Content-Language"] == "nb"
    assert tab.poll(HTTP_ACCEPT_LANGUAGE="nb") == 304 and tab.fast
    fast = tab.headers
    assert tab.poll(app=tab.server.django, HTTP_ACCEPT_LANGUAGE="nb") == 304
    assert fast == tab.headers


def test_the_fast_path_leaves_no_transaction_and_keeps_the_connection(tab: Tab) -> None:
    tab.poll()
    opened = connection.connection

    assert tab.poll() == 304 and tab.fast
    assert not connection.in_atomic_block and connection.get_autocommit()
    assert connection.connection.info.transaction_status == TransactionStatus.IDLE
    assert connection.connection is opened  # CONN_MAX_AGE: kept for the next request


@pytest.mark.parametrize("checked", [True, False], ids=["health-checked", "unchecked"])
def test_a_broken_connection_is_replaced_and_the_poll_still_answered(
    tab: Tab, checked: bool
) -> None:
    """With ``CONN_HEALTH_CHECKS`` (the reference project's) the connection is replaced
    before the token's query; without, the failed query falls through to the view."""
    saved = connection.settings_dict["CONN_HEALTH_CHECKS"]
    connection.settings_dict["CONN_HEALTH_CHECKS"] = checked
    try:
        assert tab.poll() == 304 and tab.fast
        connection.health_check_enabled = checked  # read from the settings at connect
        connection.connection.close()  # the server went away under the idle connection
        noted: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = noted.append  # type: ignore[method-assign]
        logger = logging.getLogger("batchtasks.web.fastpoll")
        logger.addHandler(handler)
        try:
            assert tab.poll() == 304  # answered either way; Django reconnected
        finally:
            logger.removeHandler(handler)
    finally:
        connection.settings_dict["CONN_HEALTH_CHECKS"] = saved

    fell = [f"fastpoll fell_through=error path={ACTIVE}"]
    assert [r.getMessage() for r in noted] == ([] if checked else fell)
    assert tab.poll() == 304 and tab.fast


def prepared_token_queries() -> list[str]:
    """The token's statements prepared on this thread's connection."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM pg_prepared_statements WHERE name LIKE 'batchtasks_poll%'")
        return [row[0] for row in cursor.fetchall()]


def test_the_token_query_is_planned_once_per_connection(tab: Tab) -> None:
    assert tab.poll() == 304 and tab.fast
    assert tab.poll() == 304 and tab.fast
    assert len(prepared_token_queries()) == 1

    connection.close()  # a new connection (CONN_MAX_AGE, a restarted server) has none

    assert tab.poll() == 304 and tab.fast
    assert len(prepared_token_queries()) == 1


def test_without_prepared_statements_nothing_of_the_poll_stays_in_the_session(
    tab: Tab, settings: Any
) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "PREPARED_STATEMENTS": False}  # PgBouncer
    connection.close()

    assert tab.poll() == 304 and tab.fast
    assert tab.poll() == 304 and tab.fast
    assert prepared_token_queries() == []


def test_a_query_log_sees_the_fast_paths_one_query(tab: Tab) -> None:
    with CaptureQueriesContext(connection) as queries:
        assert tab.poll() == 304 and tab.fast

    assert len(queries) == 1 and "django_session" in queries[0]["sql"]


def test_a_visible_change_is_answered_in_full_by_django(tab: Tab, alice: Any) -> None:
    _, fence = running(alice)
    assert tab.poll() == 200 and not tab.fast
    assert tab.poll() == 304 and tab.fast

    transitions.record_progress(fence, 40, "reading", using="default")

    assert tab.poll() == 200 and not tab.fast
    assert b'"progress_percent":40' in tab.body.replace(b" ", b"")
    assert tab.poll() == 304 and tab.fast


def test_another_users_changes_never_show_in_a_poll(tab: Tab, bob: Any) -> None:
    _, fence = running(bob)
    BatchTask.submit("examples.sleep", {}, owner=bob)
    transitions.record_progress(fence, 40, "reading", using="default")

    assert tab.poll() == 304 and tab.fast


def test_a_token_naming_another_user_reaches_django_as_the_sessions_caller(
    tab: Tab, bob: Any
) -> None:
    running(bob)
    raw = signing.TimestampSigner(salt=indicator.TOKEN_SALT).unsign(tab.cookies[TOKEN])
    _, binding = raw.split(":", 1)
    forged = signing.TimestampSigner(salt=indicator.TOKEN_SALT).sign(f"{bob.pk}:{binding}")
    tab.cookies[TOKEN] = forged  # even signed with our key, the binding is alice's
    tab.etag = "*"

    assert tab.poll() == 304 and not tab.fast  # alice's own answer, by her session


class OldSigner(signing.TimestampSigner):
    """Signs as if an hour ago."""

    def timestamp(self) -> str:
        return signing.b62_encode(int(time.time()) - 3600)


@pytest.mark.parametrize("kind", ["none", "forged", "expired", "another session's"])
def test_a_missing_or_bad_token_reaches_django(
    kind: str, tab: Tab, client: Client, alice: Any
) -> None:
    token = tab.cookies[TOKEN]
    if kind == "none":
        del tab.cookies[TOKEN]
    elif kind == "forged":
        tab.cookies[TOKEN] = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    elif kind == "expired":
        value = signing.TimestampSigner(salt=indicator.TOKEN_SALT).unsign(token)
        tab.cookies[TOKEN] = OldSigner(salt=indicator.TOKEN_SALT).sign(value)
    else:
        other = Client()
        other.force_login(alice)
        tab.cookies["sessionid"] = other.cookies["sessionid"].value

    assert tab.poll() == 304 and not tab.fast  # answered by the session: still unchanged
    assert tab.poll() == 304 and tab.fast  # with the token Django set again


def test_a_token_whose_signature_was_checked_before_still_expires(
    tab: Tab, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tab.poll() == 304 and tab.fast  # its signature checked once, and remembered
    an_hour_later = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: an_hour_later)

    assert tab.poll() == 304 and not tab.fast  # expired: answered by the session
    assert tab.poll() == 304 and tab.fast  # with the token Django set again


@pytest.mark.parametrize("revoked", ["logout", "deactivated", "password changed"])
def test_a_revoked_session_gets_no_more_304s(
    revoked: str, tab: Tab, client: Client, alice: Any
) -> None:
    assert tab.poll() == 304 and tab.fast
    if revoked == "logout":
        client.logout()  # deletes the session row; the tab still holds both cookies
    elif revoked == "deactivated":
        get_user_model().objects.filter(pk=alice.pk).update(is_active=False)
    else:
        alice.set_password("new")
        alice.save()

    assert tab.poll() == 401 and not tab.fast


@pytest.mark.parametrize(
    "request_kind",
    ["HEAD", "POST", "no If-None-Match", "Authorization", "another path", "no slash"],
)
def test_other_requests_reach_django(request_kind: str, tab: Tab, alice: Any) -> None:
    extra: dict[str, Any] = {}
    if request_kind in ("HEAD", "POST"):
        extra["method"] = request_kind
    elif request_kind == "no If-None-Match":
        tab.etag = ""
    elif request_kind == "Authorization":
        extra.update(basic(alice))
    elif request_kind == "another path":
        extra["path"] = reverse("batchtasks:api-tasks")
    else:
        extra["path"] = ACTIVE.rstrip("/")

    tab.poll(**extra)

    assert not tab.fast


def test_a_script_name_is_no_part_of_the_match(tab: Tab, settings: Any) -> None:
    assert tab.poll(SCRIPT_NAME="/app") == 304 and tab.fast
    settings.FORCE_SCRIPT_NAME = "/mounted"
    assert tab.poll() == 304 and tab.fast


def test_a_disallowed_host_reaches_django(tab: Tab) -> None:
    assert tab.poll(HTTP_HOST="evil.example") == 400 and not tab.fast


def test_an_https_redirect_is_djangos_to_give(tab: Tab, settings: Any) -> None:
    settings.SECURE_SSL_REDIRECT = True
    tab.server.django = WSGIHandler()  # its middleware read the settings when it started

    assert tab.poll() == 301 and not tab.fast


def test_an_unknown_middleware_turns_the_fast_path_off_unless_trusted(
    tab: Tab, settings: Any
) -> None:
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "django.middleware.gzip.GZipMiddleware"]
    tab.server.django = WSGIHandler()

    assert tab.poll() == 304 and not tab.fast
    trusting = Server(trusted=("django.middleware.gzip.GZipMiddleware",))
    tab.server = trusting
    assert tab.poll() == 304 and tab.fast
