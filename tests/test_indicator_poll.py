"""The indicator's poll when nothing changed: an ETag that changes exactly when a task the
caller sees in it changes, decided without building the answer, and the poll token that
answers such a 304 in one query (and is good for nothing else)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core import signing
from django.db import connection, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from batchtasks import BatchTask, transitions
from batchtasks.web import indicator
from batchtasks.web import push as push_module
from tests.accounts import basic, make_user
from tests.apitools import running
from tests.openapi import ApiClient

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_passwords")]

ACTIVE = reverse("batchtasks:api-active")
TOKEN = indicator.TOKEN_COOKIE


class Tab:
    """One browser tab's indicator: it keeps the last ETag and polls with it."""

    def __init__(self, api: ApiClient) -> None:
        self.api, self.etag = api, ""

    def poll(self) -> Any:
        headers = {"HTTP_IF_NONE_MATCH": self.etag} if self.etag else {}
        response = self.api.get(ACTIVE, **headers)
        if response.status_code == 200:
            self.etag = response["ETag"]
        return response

    def changed(self) -> bool:
        """Whether the next poll answers in full (it is not a 304)."""
        status = self.poll().status_code
        assert status in (200, 304)
        return status == 200


# --- the ETag -------------------------------------------------------------------------------


def test_the_etag_changes_exactly_when_a_task_of_the_caller_changes(
    api: ApiClient, alice: Any, bob: Any
) -> None:
    task, fence = running(alice)
    waiting = BatchTask.submit("examples.sleep", {}, owner=alice)
    others, other_fence = running(bob)
    tab = Tab(api)
    assert tab.changed()  # the first poll
    assert not tab.changed()

    BatchTask.submit("examples.sleep", {}, owner=bob)
    transitions.record_progress(other_fence, 50, "half", using="default")
    others.cancel()
    assert not tab.changed()  # another user's tasks are not in the answer

    transitions.record_progress(fence, 40, "reading", using="default")
    assert tab.changed() and not tab.changed()
    task.cancel()  # a cancel request: the flag on a running task
    assert tab.changed() and not tab.changed()
    waiting.cancel()
    assert tab.changed() and not tab.changed()
    BatchTask.submit("examples.sleep", {}, owner=alice)
    assert tab.changed() and not tab.changed()


def test_a_task_leaving_the_recent_window_changes_the_etag(api: ApiClient, alice: Any) -> None:
    done = BatchTask.submit("examples.sleep", {}, owner=alice)
    done.cancel()
    tab = Tab(api)
    assert [t["id"] for t in tab.poll().json()["tasks"]] == [done.pk]
    assert not tab.changed()

    # Time passes: no write, the task's end just falls out of INDICATOR_RECENT_SECONDS.
    BatchTask.objects.filter(pk=done.pk).update(finished_at=timezone.now() - timedelta(hours=1))

    answer = tab.poll()
    assert answer.status_code == 200 and answer.json()["tasks"] == []
    assert not tab.changed()


def test_a_deleted_task_changes_the_etag(api: ApiClient, alice: Any) -> None:
    kept = BatchTask.submit("examples.sleep", {}, owner=alice)
    gone = BatchTask.submit("examples.sleep", {}, owner=alice)
    tab = Tab(api)
    tab.poll()

    BatchTask.objects.filter(pk=gone.pk).delete()

    answer = tab.poll()
    assert answer.status_code == 200 and [t["id"] for t in answer.json()["tasks"]] == [kept.pk]


def test_who_may_view_all_tasks_still_polls_only_their_own(client: Client, bob: Any) -> None:
    boss = make_user("boss", "batchtasks.view_all_batchtasks", staff=True)
    api = ApiClient(client)
    api.force_login(boss)
    own = BatchTask.submit("examples.sleep", {}, owner=boss)
    tab = Tab(api)
    assert [t["id"] for t in tab.poll().json()["tasks"]] == [own.pk]

    BatchTask.submit("examples.sleep", {}, owner=bob)

    assert not tab.changed()


def test_the_digest_in_sql_is_the_digest_of_the_rows_sent(alice: Any) -> None:
    for _ in range(3):
        BatchTask.submit("examples.sleep", {}, owner=alice)
    rows = indicator.active_rows(BatchTask.objects.filter(owner_id=alice.pk), 300)

    in_python = indicator.rows_digest(rows.values_list("pk", "updated_at"))

    assert indicator.digest(alice.pk, 300) == in_python


def test_an_unchanged_answer_is_not_built(api: ApiClient, alice: Any, monkeypatch: Any) -> None:
    BatchTask.submit("examples.sleep", {}, owner=alice)
    tab = Tab(api)
    tab.poll()
    api.client.cookies.pop(TOKEN)  # through the session: its user, then one query
    monkeypatch.setattr("batchtasks.web.api.task_json", None)  # building would fail

    with CaptureQueriesContext(connection) as queries:
        assert tab.poll().status_code == 304

    assert len(queries) == 3, [q["sql"] for q in queries]


# --- the poll token -------------------------------------------------------------------------


def test_a_session_poll_sets_an_httponly_strict_token_for_the_poll_only(
    api: ApiClient, alice: Any
) -> None:
    response = Tab(api).poll()

    cookie = response.cookies[TOKEN]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert cookie["path"] == ACTIVE and int(cookie["max-age"]) == 300
    assert str(alice.pk) in cookie.value and api.client.session.session_key not in cookie.value


def test_with_the_token_an_unchanged_answer_costs_one_query(
    api: ApiClient, alice: Any, django_assert_num_queries: Any
) -> None:
    _, fence = running(alice)
    tab = Tab(api)
    tab.poll()

    with django_assert_num_queries(1):
        assert tab.poll().status_code == 304
    transitions.record_progress(fence, 40, "reading", using="default")
    with django_assert_num_queries(4):  # the token's, then the session, its user, the rows
        changed = tab.poll()

    assert changed.status_code == 200 and changed.json()["tasks"][0]["progress_percent"] == 40
    with django_assert_num_queries(1):
        assert tab.poll().status_code == 304


def test_basic_callers_get_no_token(client: Client, alice: Any) -> None:
    response = client.get(ACTIVE, **basic(alice))

    assert response.status_code == 200 and TOKEN not in response.cookies


def forged(value: str) -> str:
    """The token with its user id replaced (its signature kept)."""
    _, rest = value.split(":", 1)
    return "1" + rest if not value.startswith("1") else "2" + rest


class OldSigner(signing.TimestampSigner):
    """Signs as if an hour ago."""

    def timestamp(self) -> str:
        return signing.b62_encode(int(time.time()) - 3600)


@pytest.mark.parametrize("kind", ["forged", "expired", "another session's"])
def test_a_bad_token_answers_nothing_by_itself(
    kind: str, client: Client, alice: Any, bob: Any, django_assert_max_num_queries: Any
) -> None:
    api = ApiClient(client)
    api.force_login(alice)
    tab = Tab(api)
    tab.poll()
    token = client.cookies[TOKEN].value
    value = signing.TimestampSigner(salt=indicator.TOKEN_SALT).unsign(token)
    if kind == "forged":
        client.cookies[TOKEN] = forged(token)
    elif kind == "expired":
        client.cookies[TOKEN] = OldSigner(salt=indicator.TOKEN_SALT).sign(value)
    else:  # alice's token beside another session of alice's
        client.cookies["sessionid"] = signed_in_cookies(Client(), alice)["sessionid"]
        client.cookies[TOKEN] = token
    bad = client.cookies[TOKEN].value

    with CaptureQueriesContext(connection) as queries:
        response = tab.poll()

    # Answered the ordinary way: the session and its user were read.
    assert response.status_code == 304
    assert any('"django_session"' in q["sql"] for q in queries)
    assert client.cookies[TOKEN].value != bad  # and a good token is set again
    client.logout()
    client.cookies[TOKEN] = token
    assert tab.poll().status_code == 401


def signed_in_cookies(client: Client, user: Any = None) -> dict[str, str]:
    """The client's cookies (after signing ``user`` in, if given)."""
    if user is not None:
        client.force_login(user)
    return {name: morsel.value for name, morsel in client.cookies.items()}


def test_a_token_is_worthless_after_logout(api: ApiClient, alice: Any) -> None:
    tab = Tab(api)
    tab.poll()
    cookies = signed_in_cookies(api.client)

    api.logout()  # deletes the session
    for name, value in cookies.items():  # a tab still holding both cookies
        api.client.cookies[name] = value

    assert tab.poll().status_code == 401


def test_a_token_is_worthless_after_a_password_change(api: ApiClient, alice: Any) -> None:
    tab = Tab(api)
    tab.poll()

    alice.set_password("new")
    alice.save()

    assert tab.poll().status_code == 401


def test_a_token_is_worthless_once_the_user_is_deactivated(api: ApiClient, alice: Any) -> None:
    tab = Tab(api)
    tab.poll()

    get_user_model().objects.filter(pk=alice.pk).update(is_active=False)

    assert tab.poll().status_code == 401


def test_the_token_opens_nothing_else(api: ApiClient, alice: Any) -> None:
    mine = BatchTask.submit("examples.sleep", {}, owner=alice)
    Tab(api).poll()
    token = api.client.cookies[TOKEN].value
    stranger = Client()
    stranger.cookies[TOKEN] = token

    assert stranger.get(ACTIVE, HTTP_IF_NONE_MATCH="*").status_code == 401
    assert stranger.get(reverse("batchtasks:api-task", args=[mine.pk])).status_code == 401
    assert stranger.get(reverse("batchtasks:api-tasks")).status_code == 401


def test_tokens_can_be_turned_off(api: ApiClient, settings: Any) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "INDICATOR_TOKEN_SECONDS": 0}

    assert TOKEN not in Tab(api).poll().cookies


# --- push (server-sent events) --------------------------------------------------------------

EVENTS = reverse("batchtasks:api-active-events")


@pytest.fixture
def push(settings: Any) -> Iterator[None]:
    """Push on, checking often; the stream threads' connections closed afterwards (they
    would keep the test database from being dropped)."""
    settings.BATCHTASKS = {
        **settings.BATCHTASKS,
        "INDICATOR_PUSH": True,
        "INDICATOR_PUSH_INTERVAL": 0.05,
    }
    yield
    everyone = threading.Barrier(push_module.DATABASE_THREADS, timeout=10)

    def close() -> None:
        everyone.wait()
        connections.close_all()

    jobs = [push_module._executor.submit(close) for _ in range(push_module.DATABASE_THREADS)]
    for job in jobs:
        job.result()


async def next_event(content: Any) -> dict[str, str]:
    """The next event of a stream (comment lines skipped) as its fields."""
    text = b""
    while not text.endswith(b"\n\n") or text.startswith(b":"):
        if text.startswith(b":") and text.endswith(b"\n\n"):
            text = b""
        text += await content.__anext__()
    return dict(line.split(": ", 1) for line in text.decode().strip().split("\n"))


@pytest.mark.django_db(transaction=True)  # the stream reads on threads of its own
def test_push_streams_the_answer_when_it_changes_and_ends_at_logout(
    push: None, alice: Any, bob: Any
) -> None:
    from asgiref.sync import async_to_sync, sync_to_async
    from django.test import AsyncClient

    task, fence = running(alice)
    _, other_fence = running(bob)

    async def scenario() -> list[dict[str, str]]:
        client = AsyncClient()
        await client.aforce_login(alice)
        response = await client.get(EVENTS)
        assert response.status_code == 200
        assert response["Content-Type"] == "text/event-stream"
        content = response.streaming_content
        seen = [await next_event(content)]
        await sync_to_async(transitions.record_progress)(other_fence, 9, "", using="default")
        await sync_to_async(transitions.record_progress)(fence, 40, "reading", using="default")
        seen.append(await next_event(content))
        await client.alogout()
        seen.append(await next_event(content))
        await content.aclose()
        return seen

    first, progress, end = async_to_sync(scenario)()

    assert first["event"] == "tasks" and first["id"].startswith('W/"')
    assert [t["id"] for t in json.loads(first["data"])["tasks"]] == [task.pk]
    assert progress["event"] == "tasks" and progress["id"] != first["id"]
    assert json.loads(progress["data"])["tasks"][0]["progress_percent"] == 40
    assert end["event"] == "signed-out"


def test_push_is_off_by_default_and_refuses_strangers(alice: Any, settings: Any) -> None:
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    async def status(login: bool) -> int:
        client = AsyncClient()
        if login:
            await client.aforce_login(alice)
        return (await client.get(EVENTS)).status_code

    assert async_to_sync(status)(True) == 404
    settings.BATCHTASKS = {**settings.BATCHTASKS, "INDICATOR_PUSH": True}
    assert async_to_sync(status)(False) == 401
    assert Client().get(EVENTS).status_code == 404  # not under ASGI: the indicator polls
