"""API tokens: made by the command line, the tokens page and the admin, shown once and kept
only as a keyed hash; a read token reads, a submit token also submits, cancels and
retries; expired, revoked and unknown tokens are 401; no token signs anyone in to the
admin or the session pages; every API response checked against the OpenAPI document."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models.functions import Now
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from batchtasks import BatchTask, TaskState
from batchtasks.models import ApiToken
from batchtasks.services import tokens
from tests.apitools import PROBLEM, cancel, detail, problem, retry
from tests.openapi import ApiClient
from tests.openapi import schema as openapi_schema

pytestmark = pytest.mark.django_db

TASKS = reverse("batchtasks:api-tasks")
ACTIVE = reverse("batchtasks:api-active")
TYPES = reverse("batchtasks:api-types")
PAGE = reverse("batchtasks:tokens")
PLAINTEXT = re.compile(r"bt_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")
SUBMIT_BODY = {"type": "examples.progress", "params": {"steps": 1}}


def bearer(plaintext: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {plaintext}"}


def cli(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("batchtasks", "token", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def alice() -> Any:
    return get_user_model().objects.create_user("alice", password="pw-alice")


@pytest.fixture
def api() -> ApiClient:
    """A client with no session and CSRF checks on, as a script's would be."""
    return ApiClient(Client(enforce_csrf_checks=True))


def issue(user: Any, scope: str = "read", lifetime: timedelta | None = None) -> str:
    return tokens.issue(user, "test", scope, lifetime).plaintext


# --- made by the command line, the page and the admin; shown once; hashed ----------------


def test_the_command_line_prints_a_token_once_and_keeps_only_its_hash(alice: Any) -> None:
    out, err = cli("create", "--user", "alice", "--scope", "submit", "--expires", "90d")

    plaintext = out.strip()
    assert PLAINTEXT.fullmatch(plaintext)
    assert "shown this once" in err
    token = ApiToken.objects.get()
    assert (token.user, token.scope, token.name) == (alice, "submit", "command line")
    assert token.expires_at - token.created_at == timedelta(days=90)
    assert plaintext[3:15] == token.prefix
    # Nothing stored holds the secret part: only the keyed hash, which is not a plain hash.
    row = ApiToken.objects.filter(pk=token.pk).values().get()
    assert not any(plaintext[16:] in str(value) for value in row.values())
    assert (
        len(token.digest) == 64 and token.digest != hashlib.sha256(plaintext.encode()).hexdigest()
    )
    listed = cli("list")[0]
    assert f"bt_{token.prefix}" in listed and plaintext not in listed
    assert token.digest not in listed


@pytest.mark.parametrize(
    ("expires", "lifetime"),
    [("12h", timedelta(hours=12)), ("30m", timedelta(minutes=30)), ("never", None)],
)
def test_the_command_line_takes_hours_minutes_and_never(
    alice: Any, expires: str, lifetime: timedelta | None
) -> None:
    cli("create", "--user", "alice", "--expires", expires)

    token = ApiToken.objects.get()
    assert token.scope == "read"
    if lifetime is None:
        assert token.expires_at is None
    else:
        assert token.expires_at - token.created_at == lifetime


@pytest.mark.parametrize("expires", ["3x", "90", "0d", "-1d", "99999d", "1.5d", ""])
def test_a_bad_lifetime_is_one_clear_line_and_makes_no_token(alice: Any, expires: str) -> None:
    with pytest.raises(CommandError) as info:
        cli("create", "--user", "alice", f"--expires={expires}")

    message = str(info.value)
    assert message.startswith("--expires:") and "90d, 12h, 30m" in message and "\n" not in message
    assert repr(expires) in message
    assert not ApiToken.objects.exists()


def test_an_unknown_user_is_refused(alice: Any) -> None:
    with pytest.raises(CommandError, match="No user called 'mallory'"):
        cli("create", "--user", "mallory")
    assert not ApiToken.objects.exists()


def test_the_command_line_revokes_by_id_or_by_prefix(alice: Any, api: ApiClient) -> None:
    first, second = issue(alice), issue(alice)
    one, two = ApiToken.objects.order_by("pk")

    by_id = cli("revoke", str(one.pk))[0]
    by_prefix = cli("revoke", f"bt_{two.prefix}")[0]

    assert "Tokens revoked: 1;" in by_id and "Tokens revoked: 1;" in by_prefix
    for plaintext in (first, second):
        problem(api.get(TASKS, **bearer(plaintext)), 401, "not-authenticated")
    assert "revoked" in cli("list", "--user", "alice")[0]
    with pytest.raises(CommandError, match="No such token"):
        cli("revoke", "999999")


def test_the_page_shows_a_new_token_once_and_lists_it_by_prefix(client: Client, alice: Any) -> None:
    client.force_login(alice)

    made = client.post(PAGE, {"name": "deploy script", "scope": "submit", "expires": "12h"})
    again = client.get(PAGE)

    assert made.status_code == 200 and "no-store" in made["Cache-Control"]
    plaintext = PLAINTEXT.search(made.content.decode())[0]
    token = ApiToken.objects.get()
    assert (token.user, token.name, token.scope) == (alice, "deploy script", "submit")
    assert token.expires_at - token.created_at == timedelta(hours=12)
    page = again.content.decode()
    assert plaintext not in page and token.digest not in page
    assert f"bt_{token.prefix}" in page and "deploy script" in page


def test_the_page_refuses_a_bad_lifetime_and_shows_why(client: Client, alice: Any) -> None:
    client.force_login(alice)

    response = client.post(PAGE, {"name": "x", "scope": "read", "expires": "forever"})

    assert response.status_code == 200
    assert "90d, 12h, 30m" in response.content.decode()
    assert not ApiToken.objects.exists()


def test_the_page_revokes_only_the_callers_own_tokens(client: Client, alice: Any) -> None:
    bob = get_user_model().objects.create_user("bob")
    issue(alice), issue(bob)
    own, others = ApiToken.objects.get(user=alice), ApiToken.objects.get(user=bob)
    client.force_login(alice)

    client.post(PAGE, {"revoke": str(others.pk)})
    client.post(PAGE, {"revoke": str(own.pk)})

    own.refresh_from_db(), others.refresh_from_db()
    assert own.revoked_at is not None and others.revoked_at is None
    assert f"bt_{others.prefix}" not in client.get(PAGE).content.decode()


def test_the_page_needs_a_session_and_the_csrf_token(alice: Any) -> None:
    anonymous = Client().get(PAGE)
    assert anonymous.status_code == 302 and "login" in anonymous["Location"]
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)

    forged = client.post(PAGE, {"name": "x", "scope": "submit", "expires": "1d"})

    assert forged.status_code == 403
    assert not ApiToken.objects.exists()


def test_the_admin_makes_a_token_shows_it_once_and_never_the_hash(
    admin_client: Client, alice: Any
) -> None:
    add = reverse("admin:batchtasks_apitoken_add")

    made = admin_client.post(
        add, {"user": alice.pk, "name": "ci", "scope": "submit", "expires": "30m"}
    )

    token = ApiToken.objects.get()
    # Shown in the answer to the add itself, never kept for later (no message, no cookie).
    assert made.status_code == 200 and "no-store" in made["Cache-Control"]
    assert not made.cookies.get("messages") and not list(made.wsgi_request._messages)
    plaintext = PLAINTEXT.search(made.content.decode())[0]
    assert tokens.authenticate(plaintext) == token
    assert (token.user, token.name, token.scope) == (alice, "ci", "submit")
    changelist = admin_client.get(reverse("admin:batchtasks_apitoken_changelist"))
    change = admin_client.get(reverse("admin:batchtasks_apitoken_change", args=[token.pk]))
    for page in (changelist, change, admin_client.get(add)):
        html = page.content.decode()
        assert page.status_code == 200
        assert plaintext not in html and token.digest not in html
    assert f"bt_{token.prefix}" in changelist.content.decode()
    assert "alice" in changelist.content.decode()


def test_the_admin_refuses_a_bad_lifetime(admin_client: Client, alice: Any) -> None:
    add = reverse("admin:batchtasks_apitoken_add")

    response = admin_client.post(
        add, {"user": alice.pk, "name": "x", "scope": "read", "expires": "1y"}
    )

    assert response.status_code == 200 and "90d, 12h, 30m" in response.content.decode()
    assert not ApiToken.objects.exists()


def test_the_admin_action_revokes_tokens(admin_client: Client, alice: Any, api: ApiClient) -> None:
    plaintext = issue(alice)
    token = ApiToken.objects.get()

    admin_client.post(
        reverse("admin:batchtasks_apitoken_changelist"),
        {"action": "revoke_tokens", "_selected_action": [token.pk]},
    )

    token.refresh_from_db()
    assert token.revoked_at is not None
    problem(api.get(TASKS, **bearer(plaintext)), 401, "not-authenticated")


# --- scopes -----------------------------------------------------------------------------------


def test_a_read_token_lists_and_shows_the_users_tasks(alice: Any, api: ApiClient) -> None:
    task = BatchTask.submit("examples.progress", {"steps": 1}, owner=alice)
    headers = bearer(issue(alice, "read"))

    listed = api.get(TASKS, **headers)
    shown = api.get(detail(task.pk), **headers)
    types = api.get(TYPES, **headers)

    assert listed.status_code == 200 and [t["id"] for t in listed.json()["results"]] == [task.pk]
    assert shown.status_code == 200 and shown.json()["owner"] == "alice"
    assert types.status_code == 200


def test_a_read_token_cannot_submit_cancel_or_retry(alice: Any, api: ApiClient) -> None:
    waiting = BatchTask.submit("examples.progress", {"steps": 1}, owner=alice)
    cancelled = BatchTask.submit("examples.progress", {"steps": 1}, owner=alice)
    cancelled.cancel()
    headers = bearer(issue(alice, "read"))

    refusals = [
        api.post(TASKS, SUBMIT_BODY, **headers),
        api.post(cancel(waiting.pk), **headers),
        api.post(retry(cancelled.pk), **headers),
    ]

    for response in refusals:
        body = problem(response, 403, "insufficient-scope")
        assert "scope submit" in body["detail"]
        assert 'error="insufficient_scope"' in response["WWW-Authenticate"]
    assert BatchTask.objects.count() == 2
    assert BatchTask.objects.get(pk=waiting.pk).state != TaskState.CANCELLED
    assert not BatchTask.objects.get(pk=waiting.pk).cancel_requested
    assert BatchTask.objects.get(pk=cancelled.pk).state == TaskState.CANCELLED


def test_a_submit_token_submits_cancels_and_retries_without_csrf(
    alice: Any, api: ApiClient
) -> None:
    headers = bearer(issue(alice, "submit"))

    submitted = api.post(TASKS, SUBMIT_BODY, **headers)
    pk = submitted.json()["id"]
    cancelled = api.post(cancel(pk), **headers)
    retried = api.post(retry(pk), **headers)

    assert submitted.status_code == 201 and submitted.json()["owner"] == "alice"
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert retried.status_code == 200 and retried.json()["state"] == "new"
    assert BatchTask.objects.get(pk=pk).owner == alice


def test_a_token_grants_no_more_than_its_user_may(alice: Any, api: ApiClient) -> None:
    bob = get_user_model().objects.create_user("bob")
    bobs = BatchTask.submit("examples.progress", {"steps": 1}, owner=bob)
    headers = bearer(issue(alice, "submit"))

    problem(api.get(detail(bobs.pk), **headers), 404, "not-found")
    problem(api.post(cancel(bobs.pk), **headers), 404, "not-found")
    problem(api.get(TASKS + "?all=1", **headers), 403, "permission-denied")


def test_a_session_post_still_needs_the_csrf_token(alice: Any, api: ApiClient) -> None:
    api.force_login(alice)

    problem(api.post(TASKS, SUBMIT_BODY), 403, "csrf-failed")

    assert not BatchTask.objects.exists()


# --- refused tokens ---------------------------------------------------------------------------


def refused(api: ApiClient, plaintext: str) -> None:
    for response in (
        api.get(TASKS, **bearer(plaintext)),
        api.post(TASKS, SUBMIT_BODY, **bearer(plaintext)),
    ):
        problem(response, 401, "not-authenticated")
        assert response["WWW-Authenticate"] == 'Bearer realm="batchtasks", error="invalid_token"'
    assert not BatchTask.objects.exists()


def test_an_expired_token_is_401(alice: Any, api: ApiClient) -> None:
    plaintext = issue(alice, "submit", timedelta(minutes=5))
    ApiToken.objects.update(expires_at=Now() - timedelta(seconds=1))

    refused(api, plaintext)


def test_a_revoked_token_is_401(alice: Any, api: ApiClient) -> None:
    plaintext = issue(alice, "submit")
    tokens.revoke(ApiToken.objects.all())

    refused(api, plaintext)


@pytest.mark.parametrize(
    "garbage",
    ["", "nonsense", "bt_", "bt_000000000000_" + "A" * 43, "Basic abc", "bt_\x00"],
)
def test_an_unknown_or_malformed_token_is_401(alice: Any, api: ApiClient, garbage: str) -> None:
    issue(alice, "submit")

    refused(api, garbage)


def test_a_tampered_token_is_401(alice: Any, api: ApiClient) -> None:
    plaintext = issue(alice, "submit")
    tampered = plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")

    refused(api, tampered)


def test_the_token_of_a_deactivated_user_is_401(alice: Any, api: ApiClient) -> None:
    plaintext = issue(alice, "submit")
    alice.is_active = False
    alice.save()

    refused(api, plaintext)


def test_a_token_made_before_the_secret_key_was_rotated_still_works(
    alice: Any, api: ApiClient, settings: Any
) -> None:
    plaintext = issue(alice)
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-new-key-" + "x" * 50

    assert api.get(TASKS, **bearer(plaintext)).status_code == 200
    settings.SECRET_KEY_FALLBACKS = []
    problem(api.get(TASKS, **bearer(plaintext)), 401, "not-authenticated")


# --- never the admin or the session pages -----------------------------------------------------


def test_a_token_signs_nobody_in_to_the_admin_or_the_session_pages(api: ApiClient) -> None:
    boss = get_user_model().objects.create_superuser("boss", password="pw-boss")
    headers = bearer(issue(boss, "submit"))
    client = Client()

    assert api.get(TASKS, **headers).status_code == 200  # the token itself is good
    for url in (
        reverse("admin:index"),
        reverse("admin:batchtasks_batchtask_changelist"),
        reverse("admin:batchtasks_apitoken_add"),
        reverse("batchtasks:monitor"),
        reverse("home"),
        PAGE,
    ):
        response = client.get(url, **headers)
        assert response.status_code == 302 and "login" in response["Location"], url
    made = client.post(PAGE, {"name": "x", "scope": "submit", "expires": "1d"}, **headers)
    assert made.status_code == 302 and ApiToken.objects.count() == 1
    indicator = api.get(ACTIVE, **headers)
    problem(indicator, 401, "not-authenticated")
    assert indicator["WWW-Authenticate"].startswith("Bearer")


# --- last used --------------------------------------------------------------------------------


def test_last_used_is_written_at_most_once_a_minute(alice: Any, api: ApiClient) -> None:
    plaintext = issue(alice)
    token = ApiToken.objects.get()
    assert token.last_used_at is None

    api.get(TASKS, **bearer(plaintext))
    token.refresh_from_db()
    first = token.last_used_at
    with CaptureQueriesContext(connection) as queries:
        api.get(TASKS, **bearer(plaintext))
    token.refresh_from_db()
    unchanged = token.last_used_at
    ApiToken.objects.update(last_used_at=Now() - timedelta(seconds=tokens.TOUCH_SECONDS + 1))
    api.get(TASKS, **bearer(plaintext))
    token.refresh_from_db()

    assert first is not None and abs(first - timezone.now()) < timedelta(minutes=5)
    assert unchanged == first
    assert not any("UPDATE" in q["sql"] and "apitoken" in q["sql"] for q in queries)
    assert token.last_used_at > first


# --- the OpenAPI document ---------------------------------------------------------------------


def test_the_openapi_document_declares_the_bearer_scheme_on_its_operations() -> None:
    document = openapi_schema()

    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    operations = {
        op["operationId"]: op.get("security", document["security"])
        for item in document["paths"].values()
        for op in item.values()
    }
    assert operations.pop("getSchema") == []
    assert {"bearer": ["read"]} not in operations.pop("activeTasks")
    for name in ("submitTask", "cancelTask", "retryTask"):
        assert {"bearer": ["submit"]} in operations.pop(name)
    for name, security in operations.items():
        assert {"bearer": ["read"]} in security, name
    forbidden = document["components"]["responses"]["Forbidden"]["content"]
    assert PROBLEM + "insufficient-scope" in json.dumps(forbidden)
