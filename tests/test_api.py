"""The JSON API: who sees and changes which tasks, what a submit accepts and refuses,
paging, the indicator's poll; every response checked against the OpenAPI document."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from batchtasks import BatchTask, TaskState, transitions
from batchtasks.core.plugin import BatchTaskPlugin
from batchtasks.core.registry import batchtask, registry
from batchtasks.models import BatchTaskDefinition
from batchtasks.services.definitions import get_definition
from tests.accounts import basic, make_user
from tests.apitools import cancel, detail, problem, retry
from tests.openapi import ApiClient
from tests.openapi import check as check_openapi
from tests.taskdb import TASK_DB
from tests.workers import wait_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_passwords")]

TASKS = reverse("batchtasks:api-tasks")
ACTIVE = reverse("batchtasks:api-active")
TYPES = reverse("batchtasks:api-types")
SCHEMA = reverse("batchtasks:api-schema")


def raw(fields: bytes) -> bytes:
    """A raw body of an examples.progress submit with these fields too."""
    return b'{"type": "examples.progress", ' + fields + b"}"


def checked(response: Any) -> Any:
    """The response, once checked against the OpenAPI document."""
    check_openapi(response)
    return response


def submit(api: ApiClient, **body: Any) -> Any:
    return api.post(TASKS, {"type": "examples.progress", "params": {"steps": 1}, **body})


# --- submit ---------------------------------------------------------------------------


def test_a_submit_creates_a_task_owned_by_the_caller(api: ApiClient, alice: Any) -> None:
    response = submit(api, priority=-10, description="nap <b>now</b>")

    assert response.status_code == 201
    body = response.json()
    assert response["Location"] == detail(body["id"]) == body["url"]
    task = BatchTask.objects.get(pk=body["id"])
    assert task.owner == alice and task.priority == -10 and task.params == {"steps": 1}
    assert body["owner"] == "alice" and body["description"] == "nap <b>now</b>"
    assert body["state"] in ("new", "queued") and body["can_cancel"] and not body["can_retry"]
    assert response["Content-Type"] == "application/json"


def test_run_after_takes_a_time_with_an_offset_or_seconds(api: ApiClient) -> None:
    later = submit(api, run_after="2099-01-01T10:00:00+02:00").json()
    soon = submit(api, run_after=3600).json()

    assert (
        BatchTask.objects.get(pk=later["id"]).run_after.isoformat() == "2099-01-01T08:00:00+00:00"
    )
    delay = BatchTask.objects.get(pk=soon["id"]).run_after - timezone.now()
    assert timedelta(minutes=59) < delay <= timedelta(hours=1)
    assert later["state"] == soon["state"] == "new"


@pytest.mark.parametrize(
    ("raw", "status", "slug", "field"),
    [
        (b"{not json", 400, "bad-json", None),
        (raw(b'"priority": NaN'), 400, "bad-json", None),
        (raw(b'"description": "\\ud800"'), 400, "bad-json", None),
        (b"\xff\xfe", 400, "bad-json", None),
        (b'["examples.progress"]', 400, "invalid-request", None),
        (b"{}", 400, "invalid-request", "type"),
        (raw(b'"owner": "bob"'), 400, "invalid-request", "owner"),
        (b'{"type": 7}', 400, "invalid-request", "type"),
        (raw(b'"params": [1]'), 400, "invalid-request", "params"),
        (raw(b'"priority": 101'), 400, "invalid-request", "priority"),
        (raw(b'"priority": true'), 400, "invalid-request", "priority"),
        (raw(b'"priority": 1.0'), 400, "invalid-request", "priority"),
        (raw(b'"priority": "5"'), 400, "invalid-request", "priority"),
        (raw(b'"description": 5'), 400, "invalid-request", "description"),
        (raw(b'"description": "a\\u0000"'), 400, "invalid-request", None),
        (raw(b'"run_after": "2099-01-01T10:00:00"'), 400, "invalid-request", "run_after"),
        (raw(b'"run_after": "tomorrow"'), 400, "invalid-request", "run_after"),
        (raw(b'"run_after": -1'), 400, "invalid-request", "run_after"),
        (raw(b'"run_after": 1e300'), 400, "invalid-request", "run_after"),
        (raw(b'"run_after": true'), 400, "invalid-request", "run_after"),
        (raw(b'"run_after": "0001-01-01T00:00:00+01:00"'), 400, "invalid-request", "run_after"),
        (raw(b'"unique_key": 5'), 400, "invalid-request", "unique_key"),
        (b'{"type": "no.such.type"}', 400, "unknown-type", None),
        (b'{"type": "examples.noop"}', 403, "not-submittable", None),
        # Not on the API: its parameters play a plugin that misbehaves (workers' tests).
        (b'{"type": "examples.sleep", "params": {"seconds": 1e308}}', 403, "not-submittable",
         None),
        (b'{"type": "examples.sleep", "params": {"ignore_sigterm": true}}', 403,
         "not-submittable", None),
    ],
)  # fmt: skip
def test_bad_submits_answer_a_problem_and_write_nothing(
    api: ApiClient, raw: bytes, status: int, slug: str, field: str | None
) -> None:
    before = BatchTask.objects.count()

    body = problem(api.post(TASKS, raw), status, slug)

    if field is not None:
        assert field in {e["field"] for e in body["errors"]}
    assert BatchTask.objects.count() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "examples.progress", "params": {"delay": 1e308}}, "params.delay"),
        ({"type": "examples.progress", "params": {"delay": "inf"}}, "params.delay"),
        ({"type": "examples.progress", "params": {"steps": 10**9}}, "params.steps"),
        ({"type": "examples.progress", "params": {"silent_after": 86400}}, "params.silent_after"),
        ({"type": "examples.progress", "params": {"message": "m" * 201}}, "params.message"),
        ({"type": "examples.fail", "params": {"message": "m" * 501}}, "params.message"),
    ],
)
def test_the_demo_types_refuse_values_out_of_their_bounds(
    api: ApiClient, body: dict[str, Any], field: str
) -> None:
    refused = problem(api.post(TASKS, body), 400, "invalid-request")

    assert [e["field"] for e in refused["errors"]] == [field]
    assert BatchTask.objects.count() == 0


def test_a_number_json_reads_as_infinity_is_refused(api: ApiClient) -> None:
    # 1e999 is valid JSON; Python reads it as inf, which no bound would catch by comparing.
    body = b'{"type": "examples.progress", "params": {"delay": 1e999}}'

    refused = problem(api.post(TASKS, body), 400, "invalid-request")

    assert refused["errors"] == [{"field": "params.delay", "message": "expected a number, got inf"}]
    assert BatchTask.objects.count() == 0


def test_a_parameter_only_code_may_set_is_refused_over_http(api: ApiClient, alice: Any) -> None:
    # "atomic" holds a database transaction open for the whole run: tests set it from code.
    body = {"type": "examples.progress", "params": {"steps": 1, "atomic": True}}

    refused = problem(api.post(TASKS, body), 400, "invalid-request")

    assert refused["errors"][0]["field"] == "params.atomic"
    assert "HTTP" in refused["errors"][0]["message"]
    assert BatchTask.objects.count() == 0
    assert BatchTask.submit("examples.progress", {"steps": 1, "atomic": True}, owner=alice)


# --- priority ---------------------------------------------------------------------------


def test_raising_a_priority_above_the_types_default_needs_change_batchtask(
    api: ApiClient, alice: Any
) -> None:
    allowed = [submit(api), submit(api, priority=-100), submit(api, priority=0)]

    refused = problem(submit(api, priority=1), 403, "permission-denied")

    assert [r.status_code for r in allowed] == [201, 201, 201]
    assert refused["errors"][0]["field"] == "priority"
    assert "batchtasks.change_batchtask" in refused["detail"]
    assert "batchtasks.change_batchtask" in refused["errors"][0]["message"]
    assert BatchTask.objects.count() == 3
    alice.user_permissions.add(Permission.objects.get(codename="change_batchtask"))
    api.force_login(get_user_model().objects.get(pk=alice.pk))  # no cached permissions
    raised = submit(api, priority=100)
    assert raised.status_code == 201
    assert BatchTask.objects.get(pk=raised.json()["id"]).priority == 100


def test_the_default_a_priority_is_held_to_is_the_definitions_live_one(api: ApiClient) -> None:
    submit(api)  # creates the definition
    BatchTaskDefinition.objects.filter(name="examples.progress").update(priority=50)

    at_default = submit(api, priority=50)
    above = submit(api, priority=51)

    assert at_default.status_code == 201
    assert "(50)" in problem(above, 403, "permission-denied")["detail"]


def test_superusers_may_raise_priorities(client: Client, admin_user: Any) -> None:
    api = ApiClient(client)
    api.force_login(admin_user)

    assert submit(api, priority=100).status_code == 201


# --- content type -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/vnd.example+json",
    ],
)
def test_unsafe_requests_with_a_body_that_is_not_json_are_415(
    alice: Any, content_type: str
) -> None:
    # Forms of other sites can send only text/plain, urlencoded and multipart bodies; a
    # browser that sends neither Origin nor Sec-Fetch-Site with remembered Basic
    # credentials passes the CSRF gate, so the body's type must keep such forms out.
    api = ApiClient(Client(enforce_csrf_checks=True))
    mine = BatchTask.submit("examples.progress", {"steps": 1}, owner=alice)
    body = json.dumps({"type": "examples.progress", "params": {"steps": 1}})

    submitted = api.post(TASKS, body, content_type=content_type, **basic(alice))
    cancelled = api.post(cancel(mine.pk), "x=1", content_type=content_type, **basic(alice))

    for response in (submitted, cancelled):
        assert "application/json" in problem(response, 415, "unsupported-media-type")["detail"]
    assert list(BatchTask.objects.values_list("pk", "state")) == [(mine.pk, mine.state)]


def test_json_with_a_charset_and_a_post_without_a_body_are_accepted(alice: Any) -> None:
    api = ApiClient(Client(enforce_csrf_checks=True))
    body = json.dumps({"type": "examples.progress", "params": {"steps": 1}})

    created = api.post(TASKS, body, content_type="Application/JSON; charset=utf-8", **basic(alice))
    # What `curl -X POST -u user:pw …/cancel/` sends: no body and no Content-Type.
    bare = checked(api.client.generic("POST", cancel(created.json()["id"]), **basic(alice)))

    assert created.status_code == 201
    assert bare.status_code == 200 and bare.json()["state"] == "cancelled"


def test_user_strings_go_out_as_inert_json(api: ApiClient) -> None:
    script = "<script>alert('x')</script> & <img src=x onerror=alert(1)>"

    created = submit(api, description=script)
    unknown = submit(api, type="<b>x</b>")

    for response in (created, unknown, api.get(TASKS), api.get(ACTIVE)):
        assert response["Content-Type"] in ("application/json", "application/problem+json")
        assert b"<" not in response.content and b"&" not in response.content
    assert created.json()["description"] == script
    assert "<b>x</b>" in unknown.json()["detail"]


def test_a_disabled_type_is_not_submittable(api: ApiClient) -> None:
    submit(api)
    BatchTaskDefinition.objects.filter(name="examples.progress").update(enabled=False)

    problem(submit(api), 403, "not-submittable")
    assert BatchTask.objects.count() == 1


def test_texts_over_their_limits_are_refused(api: ApiClient) -> None:
    long_description = problem(submit(api, description="d" * 501), 400, "invalid-request")
    long_key = problem(submit(api, unique_key="k" * 201), 400, "invalid-request")

    assert long_description["errors"][0]["field"] == "description"
    assert long_key["errors"][0]["field"] == "unique_key"
    assert submit(api, description="d" * 500, unique_key="k" * 200).status_code == 201
    assert BatchTask.objects.count() == 1


def test_parameters_over_the_limit_are_413_by_body_or_encoded_size(
    api: ApiClient, settings: Any
) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "MAX_PARAMS_BYTES": 1000}
    huge_body = json.dumps({"type": "examples.progress", "params": {"x": "y" * 70_000}})
    # Under the body's limit (parameters + room for the other fields), over the parameters'.
    big_params = {"type": "examples.progress", "params": {"x": "y" * 2_000}}

    problem(api.post(TASKS, huge_body), 413, "params-too-large")
    problem(api.post(TASKS, big_params), 413, "params-too-large")
    assert BatchTask.objects.count() == 0


def test_an_unknown_type_names_only_types_the_caller_may_submit(api: ApiClient) -> None:
    body = problem(submit(api, type="examples.progres"), 400, "unknown-type")

    assert "examples.progress" in body["detail"]
    assert "examples.noop" not in body["detail"] and "examples.flaky" not in body["detail"]
    assert "examples.sleep" not in body["detail"]


@pytest.fixture
def permission_type() -> Any:
    """A type that users with retry_batchtask may submit over HTTP."""

    @batchtask("tests.api_guarded", web="batchtasks.retry_batchtask")
    class Guarded(BatchTaskPlugin):
        def run(self, params: Any) -> None:
            return None

    yield "tests.api_guarded"
    registry.unregister("tests.api_guarded")


def test_a_type_guarded_by_a_permission_needs_it(
    api: ApiClient, alice: Any, bob: Any, permission_type: str
) -> None:
    # The document was read before this type was registered: its enum lacks it.
    with api.undocumented():
        problem(submit(api, type=permission_type, params={}), 403, "not-submittable")
        assert permission_type not in {t["name"] for t in api.get(TYPES).json()}
        bob.user_permissions.add(Permission.objects.get(codename="retry_batchtask"))
        api.force_login(get_user_model().objects.get(pk=bob.pk))
        assert submit(api, type=permission_type, params={}).status_code == 201
        assert permission_type in {t["name"] for t in api.get(TYPES).json()}


def test_types_lists_what_the_caller_may_submit(api: ApiClient) -> None:
    types = api.get(TYPES).json()

    names = [t["name"] for t in types]
    # reports.users_csv needs auth.view_user (tests/test_plugins.py); examples.sleep is
    # not on the API.
    assert names == ["examples.fail", "examples.progress"]
    assert types[0] == {
        "name": "examples.fail",
        "description": "Raise an error with params['message'].",
        "max_concurrency_per_key": None,
        "rate_limit": "",
    }


def test_a_submit_takes_its_keys_and_the_task_shows_them(api: ApiClient) -> None:
    definition = get_definition("examples.progress")
    BatchTaskDefinition.objects.filter(pk=definition.pk).update(
        max_concurrency_per_key=1, rate_limit="5/m"
    )
    keys = {"concurrency_key": "customer-42", "rate_key": "customer-42"}
    response = submit(api, type="examples.progress", params={}, **keys)

    assert response.status_code == 201
    assert {k: response.json()[k] for k in keys} == keys
    task = BatchTask.objects.get(pk=response.json()["id"])
    assert (task.concurrency_key, task.rate_key) == ("customer-42", "customer-42")
    shown = {t["name"]: t for t in api.get(TYPES).json()}["examples.progress"]
    assert (shown["max_concurrency_per_key"], shown["rate_limit"]) == (1, "5/m")


# --- unique keys ------------------------------------------------------------------------


def test_a_unique_key_the_caller_holds_returns_their_task(api: ApiClient) -> None:
    first = submit(api, unique_key="nightly")

    again = submit(api, unique_key="nightly")

    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert "Location" not in again
    assert BatchTask.objects.count() == 1


def test_a_unique_key_another_user_holds_is_409_and_reveals_nothing(
    api: ApiClient, bob: Any
) -> None:
    theirs = BatchTask.submit("examples.progress", {"steps": 1}, owner=bob, unique_key="nightly")
    api.force_login(make_user("carol", "batchtasks.change_batchtask"))  # may raise priorities

    response = submit(api, unique_key="nightly", priority=100)

    body = problem(response, 409, "unique-key-conflict")
    assert str(theirs.pk) not in response.content.decode() and "bob" not in body["detail"]
    assert BatchTask.objects.count() == 1
    assert BatchTask.objects.get(pk=theirs.pk).priority == 0  # not raised to the newcomer's


# --- who sees what --------------------------------------------------------------------------


def test_another_users_task_is_404_everywhere_and_never_listed(api: ApiClient, bob: Any) -> None:
    theirs = BatchTask.submit("examples.sleep", {"seconds": 1}, owner=bob)

    problem(api.get(detail(theirs.pk)), 404, "not-found")
    problem(api.post(cancel(theirs.pk)), 404, "not-found")
    problem(api.post(retry(theirs.pk)), 404, "not-found")
    assert api.get(TASKS).json()["results"] == []
    assert api.get(ACTIVE).json()["tasks"] == []
    problem(api.get(TASKS, {"all": "1"}), 403, "permission-denied")
    problem(api.get(TASKS, {"owner": "bob"}), 403, "permission-denied")
    assert BatchTask.objects.get(pk=theirs.pk).state != TaskState.CANCELLED


def test_staff_with_view_all_see_everyones_tasks(client: Client, alice: Any, bob: Any) -> None:
    staff = make_user("carol", "batchtasks.view_all_batchtasks", staff=True)
    alices = BatchTask.submit("examples.sleep", {"seconds": 1}, owner=alice)
    bobs = BatchTask.submit("examples.sleep", {"seconds": 1}, owner=bob)
    api = ApiClient(client)
    api.force_login(staff)

    assert api.get(detail(alices.pk)).json()["owner"] == "alice"
    assert [t["id"] for t in api.get(TASKS, {"all": "1"}).json()["results"]] == [bobs.pk, alices.pk]
    assert [t["id"] for t in api.get(TASKS, {"owner": "bob"}).json()["results"]] == [bobs.pk]
    assert api.get(TASKS).json()["results"] == []  # by default, one's own
    assert api.get(ACTIVE).json()["tasks"] == []
    # Seeing is not changing: cancel needs its own permission.
    problem(api.post(cancel(alices.pk)), 403, "permission-denied")
    staff.user_permissions.add(Permission.objects.get(codename="cancel_batchtask"))
    api.force_login(get_user_model().objects.get(pk=staff.pk))
    assert api.post(cancel(alices.pk)).json()["state"] == "cancelled"


def test_tracebacks_are_shown_to_staff_only(client: Client, alice: Any) -> None:
    task = BatchTask.submit("examples.fail", {}, owner=alice)
    BatchTask.objects.filter(pk=task.pk).update(
        state=TaskState.FAILED, error_type="ValueError", error_message="<b>no</b>",
        error_traceback="Traceback (most recent call last): secret",
    )  # fmt: skip
    api = ApiClient(client)
    api.force_login(alice)
    mine = api.get(detail(task.pk)).json()
    api.force_login(make_user("root", "batchtasks.view_all_batchtasks", staff=True))
    staffs = api.get(detail(task.pk)).json()

    assert mine["error"] == {"type": "ValueError", "message": "<b>no</b>"}
    assert staffs["error"]["traceback"] == "Traceback (most recent call last): secret"
    assert mine["can_retry"] and not staffs["can_retry"]


# --- authentication and CSRF ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", TASKS),
        ("post", TASKS),
        ("get", ACTIVE),
        ("get", detail(1)),
        ("post", cancel(1)),
        ("post", retry(1)),
        ("get", TYPES),
    ],
)
def test_anonymous_callers_get_401_everywhere(client: Client, method: str, url: str) -> None:
    api = ApiClient(client)

    scripted = getattr(api, method)(url, HTTP_X_REQUESTED_WITH="XMLHttpRequest")
    plain = getattr(api, method)(url)

    problem(scripted, 401, "not-authenticated")
    assert scripted["WWW-Authenticate"] == 'Session realm="batchtasks"'
    assert plain["WWW-Authenticate"] == 'Basic realm="batchtasks"'
    assert BatchTask.objects.count() == 0


def test_anyone_may_read_the_schema(client: Client) -> None:
    response = ApiClient(client).get(SCHEMA)

    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    enum = document["components"]["schemas"]["SubmitRequest"]["properties"]["type"]["enum"]
    assert "examples.progress" in enum and "examples.noop" not in enum
    assert "examples.sleep" not in enum


def test_wrong_passwords_and_inactive_users_are_refused(client: Client, alice: Any) -> None:
    api = ApiClient(client)
    sleeper = make_user("sleeper", active=False)

    problem(api.get(TASKS, **basic(alice, "wrong")), 401, "not-authenticated")
    problem(api.get(TASKS, **basic(sleeper)), 401, "not-authenticated")
    problem(api.get(TASKS, HTTP_AUTHORIZATION="Basic %%%"), 401, "not-authenticated")
    client.force_login(sleeper, backend="django.contrib.auth.backends.AllowAllUsersModelBackend")
    problem(api.get(TASKS), 401, "not-authenticated")
    assert api.get(TASKS, **basic(alice)).status_code == 200


def test_session_posts_need_the_csrf_token(alice: Any) -> None:
    api = ApiClient(Client(enforce_csrf_checks=True))
    api.force_login(alice)
    body = {"type": "examples.progress"}

    problem(api.post(TASKS, body), 403, "csrf-failed")
    assert BatchTask.objects.count() == 0
    token = "a" * 32
    api.client.cookies["csrftoken"] = token
    created = api.post(TASKS, body, HTTP_X_CSRFTOKEN=token)
    assert created.status_code == 201
    problem(api.post(cancel(created.json()["id"])), 403, "csrf-failed")
    assert api.post(cancel(created.json()["id"]), HTTP_X_CSRFTOKEN=token).status_code == 200


def test_basic_auth_posts_need_no_csrf_token(alice: Any) -> None:
    api = ApiClient(Client(enforce_csrf_checks=True))

    response = api.post(TASKS, {"type": "examples.progress"}, **basic(alice))

    assert response.status_code == 201
    assert BatchTask.objects.get().owner == alice


@pytest.mark.parametrize(
    "browser_header",
    [{"HTTP_SEC_FETCH_SITE": "cross-site"}, {"HTTP_ORIGIN": "https://evil.example"}],
)
def test_basic_credentials_a_browser_sends_from_a_page_need_the_csrf_token(
    alice: Any, browser_header: dict[str, str]
) -> None:
    # A browser that once answered the Basic prompt sends the credentials on its own,
    # also with another site's forms.
    api = ApiClient(Client(enforce_csrf_checks=True))

    problem(
        api.post(TASKS, {"type": "examples.progress"}, **basic(alice), **browser_header),
        403,
        "csrf-failed",
    )

    assert BatchTask.objects.count() == 0


def test_other_methods_are_405_with_allow(api: ApiClient) -> None:
    problem(api.put(TASKS), 405, "method-not-allowed")
    assert api.delete(TASKS)["Allow"] == "GET, POST"
    assert api.get(cancel(1))["Allow"] == "POST"
    assert api.post(ACTIVE)["Allow"] == "GET"


# --- cancel and retry ---------------------------------------------------------------------


def test_cancel_and_retry_change_the_task_and_refuse_the_wrong_state(api: ApiClient) -> None:
    pk = submit(api).json()["id"]

    cancelled = api.post(cancel(pk))
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    problem(api.post(cancel(pk)), 409, "wrong-state")
    retried = api.post(retry(pk))
    assert retried.status_code == 200
    assert retried.json()["state"] in ("new", "queued") and retried.json()["attempt"] == 2
    problem(api.post(retry(pk)), 409, "wrong-state")
    assert api.get(detail(pk)).json()["attempt"] == 2


def test_cancelling_a_running_task_asks_it_to_stop(api: ApiClient, alice: Any) -> None:
    task = BatchTask.submit("examples.sleep", {}, owner=alice)
    BatchTask.objects.filter(pk=task.pk).update(state=TaskState.RUNNING)  # as a worker would

    first = api.post(cancel(task.pk)).json()
    again = api.post(cancel(task.pk))

    assert first["state"] == "running" and first["cancel_requested"] and not first["can_cancel"]
    assert again.status_code == 200 and again.json()["cancel_requested"]


def test_a_retry_whose_unique_key_is_taken_again_is_409(api: ApiClient) -> None:
    first = submit(api, unique_key="k").json()["id"]
    api.post(cancel(first))
    submit(api, unique_key="k")

    problem(api.post(retry(first)), 409, "unique-key-conflict")
    assert BatchTask.objects.get(pk=first).state == TaskState.CANCELLED


# --- the list -------------------------------------------------------------------------------


def test_pages_run_newest_first_without_repeats(api: ApiClient, alice: Any) -> None:
    made = [BatchTask.submit("examples.sleep", {"seconds": i}, owner=alice).pk for i in range(7)]

    seen, url, pages = [], TASKS + "?limit=3", 0
    while url:
        page = api.get(url).json()
        seen += [t["id"] for t in page["results"]]
        url, pages = page["next"], pages + 1

    assert pages == 3
    assert seen == sorted(made, reverse=True)


def test_the_list_filters_by_state_type_time_and_id(api: ApiClient, alice: Any) -> None:
    sleep = BatchTask.submit("examples.sleep", {}, owner=alice)
    fail = BatchTask.submit("examples.fail", {}, owner=alice)
    progress = BatchTask.submit("examples.progress", {}, owner=alice)
    progress.cancel()
    cancelled_at = BatchTask.objects.get(pk=progress.pk).updated_at

    def ids(**query: Any) -> list[int]:
        return [t["id"] for t in api.get(TASKS, query).json()["results"]]

    assert ids(state="cancelled") == [progress.pk]
    assert ids(type="examples.fail") == [fail.pk]
    assert ids(id=[sleep.pk, progress.pk]) == [progress.pk, sleep.pk]
    with api.undocumented():  # comma lists: the admin's live refresh sends them
        assert ids(id=f"{sleep.pk},{fail.pk}") == [fail.pk, sleep.pk]
        assert set(ids(state="new,queued")) == {sleep.pk, fail.pk}
    since = (cancelled_at - timedelta(microseconds=1)).isoformat()
    assert ids(since=since) == [progress.pk]
    assert ids(since=cancelled_at.isoformat()) == []


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "201"},
        {"limit": "ten"},
        {"cursor": "not-a-cursor"},
        {"state": "sleeping"},
        {"since": "yesterday"},
        {"since": "2026-11-30T13:00:00"},
        {"id": "one"},
        {"id": "99999999999999999999"},
        {"id": [str(i) for i in range(1, 102)]},
        {"all": "maybe"},
        {"type": "a\x00b"},
    ],
)
def test_malformed_list_queries_are_400(api: ApiClient, query: dict[str, str]) -> None:
    body = problem(api.get(TASKS, query), 400, "invalid-request")

    assert [e["field"] for e in body["errors"]] == list(query)


# --- the indicator's poll ---------------------------------------------------------------


def test_active_shows_unfinished_and_recently_finished_tasks(api: ApiClient, alice: Any) -> None:
    waiting = BatchTask.submit("examples.sleep", {}, owner=alice)
    recent = BatchTask.submit("examples.sleep", {}, owner=alice)
    old = BatchTask.submit("examples.sleep", {}, owner=alice)
    recent.cancel()
    old.cancel()
    BatchTask.objects.filter(pk=old.pk).update(finished_at=timezone.now() - timedelta(hours=1))

    body = api.get(ACTIVE).json()

    assert [t["id"] for t in body["tasks"]] == [waiting.pk, recent.pk]
    assert body["recent_seconds"] == 300


def test_active_answers_304_until_a_task_changes(api: ApiClient, alice: Any) -> None:
    task = BatchTask.submit("examples.progress", {}, owner=alice)
    BatchTask.objects.filter(pk=task.pk).update(state=TaskState.QUEUED, queue="batch.x")
    fence = transitions.Fence(task.pk, 1, "a" * 32)
    transitions.claim(fence, worker="w@host", pid=1, lease_seconds=30, using=TASK_DB)
    first = api.get(ACTIVE)

    unchanged = api.get(ACTIVE, HTTP_IF_NONE_MATCH=first["ETag"])
    transitions.record_progress(fence, 40, "40 %", using=TASK_DB)  # as a worker reports
    changed = api.get(ACTIVE, HTTP_IF_NONE_MATCH=first["ETag"])

    assert first["ETag"].startswith('W/"') and first["Cache-Control"] == "private, no-cache"
    assert unchanged.status_code == 304 and unchanged.content == b""
    assert changed.status_code == 200 and changed["ETag"] != first["ETag"]
    assert changed.json()["tasks"][0]["progress_percent"] == 40
    assert {"Cookie", "Authorization"} <= {v.strip() for v in changed["Vary"].split(",")}


def test_active_reads_the_tasks_in_one_query_on_the_database_clock(
    api: ApiClient, alice: Any, django_assert_max_num_queries: Any
) -> None:
    for i in range(5):
        BatchTask.submit("examples.sleep", {"seconds": i}, owner=alice)

    # The session, its user and the tasks: no permission or per-task queries.
    with django_assert_max_num_queries(3), CaptureQueriesContext(connections[TASK_DB]) as queries:
        response = api.get(ACTIVE)

    assert len(response.json()["tasks"]) == 5
    on_tasks = [q["sql"] for q in queries if '"batchtasks_batchtask"' in q["sql"]]
    assert len(on_tasks) == 1, on_tasks
    assert "STATEMENT_TIMESTAMP()" in on_tasks[0]


# --- with a real worker ------------------------------------------------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_task_submitted_over_http_runs_on_a_real_worker(
    start_worker: Any, client: Client, alice: Any
) -> None:
    start_worker(queues=["batch.examples.progress"])
    api = ApiClient(client)
    submitted = api.post(
        TASKS, {"type": "examples.progress", "params": {"steps": 3, "delay": 0.05}}, **basic(alice)
    ).json()

    def finished() -> dict[str, Any] | None:
        body = api.get(submitted["url"], **basic(alice)).json()
        return body if body["state_code"] in (4, 5) else None

    done = wait_for(finished, timeout=60, interval=0.2)
    assert done["state"] == "succeeded" and done["state_code"] == 4
    assert done["result"] == {"steps": 3} and done["progress_percent"] == 100
