"""The staff monitor page: workers, queue loads, running tasks, failures and the hour's
chart, for staff only, escaped, in a number of queries that does not grow with the rows."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.db.models.functions import Now
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils.html import strip_tags

from batchtasks import BatchTask, TaskState
from batchtasks.models import BatchTaskDefinition, BatchWorker, WorkerState
from batchtasks.services.workers import Identity, register_worker, worker_seen

pytestmark = pytest.mark.django_db

MONITOR = reverse("batchtasks:monitor")
XSS = "<img src=x onerror=alert(1)>"


def ago(**delta: float) -> Any:
    """A time that far before now, by the database's clock."""
    return Now() - timedelta(**delta)


def submit(type_name: str, state: str = TaskState.NEW, **fields: Any) -> BatchTask:
    """A task submitted for real, then placed where the test needs it."""
    task = BatchTask.submit(type_name, {}, run_after=timedelta(hours=1))
    if state != TaskState.NEW or fields:
        BatchTask.objects.filter(pk=task.pk).update(state=state, run_after=None, **fields)
    return task


def finish(type_name: str, state: str, minutes_ago: float, **fields: Any) -> BatchTask:
    return submit(type_name, state, finished_at=ago(minutes=minutes_ago), **fields)


def row(html: str, name: str) -> str:
    """The monitor's table row for a queue or type, or a worker."""
    match = re.search(rf'data-(?:name|worker)="{re.escape(name)}".*?</tr>', html, re.S)
    assert match, f"no row for {name!r}"
    return match.group(0)


def cell(html: str, name: str, column: str) -> str:
    """The text of one cell of a queue or type row."""
    match = re.search(rf'data-col="{column}">(.*?)</td>', row(html, name), re.S)
    assert match, f"no column {column!r} in the row of {name!r}"
    return " ".join(unescape(strip_tags(match.group(1))).split())


def seen_worker(name: str, **fields: Any) -> BatchWorker:
    identity = Identity(name, name.ljust(32, "x")[:32], 4242, "", 0.0)
    worker = register_worker(
        identity, queues=["batch.examples.sleep"], concurrency=2, using="default"
    )
    worker_seen(identity.instance, in_hand=1, cpu=12.5, memory=300 * 2**20, using="default")
    if fields:
        BatchWorker.objects.filter(pk=worker.pk).update(**fields)
    return worker


def test_staff_see_live_and_recent_workers_with_heartbeat_and_usage(admin_client: Client) -> None:
    seen_worker("live@web1")
    seen_worker("quiet@web2", last_seen_at=ago(minutes=2))  # online, but its heartbeat stopped
    seen_worker("gone@web3", state=WorkerState.STOPPED, last_seen_at=ago(minutes=20))
    seen_worker("old@web4", state=WorkerState.STOPPED, last_seen_at=ago(hours=2))

    html = admin_client.get(MONITOR).content.decode()

    live = strip_tags(row(html, "live@web1"))
    assert "web1" in live and "4242" in live and "Online" in live
    assert re.search(r"\b[0-5] s ago", live), live
    assert "1 / 2" in live and "12.5 %" in live and "300.0\xa0MB" in live
    assert "Offline (heartbeat lost)" in strip_tags(row(html, "quiet@web2"))
    assert "2 min 0" in strip_tags(row(html, "quiet@web2"))
    assert "Stopped" in strip_tags(row(html, "gone@web3"))
    assert "old@web4" not in html
    assert re.search(r"<strong[^>]*>1</strong> worker online", html)


def test_queues_show_each_types_load_and_recent_finishes(admin_client: Client) -> None:
    BatchTaskDefinition.objects.filter(name="examples.sleep").update(max_concurrency=3)
    submit("examples.sleep", TaskState.RUNNING)
    submit("examples.sleep", TaskState.QUEUED)
    submit("examples.sleep", created_at=ago(minutes=7))  # due, waiting 7 min
    submit("examples.sleep")  # delayed by an hour
    finish("examples.sleep", TaskState.SUCCEEDED, 1)
    finish("examples.sleep", TaskState.FAILED, 2)
    finish("examples.sleep", TaskState.FAILED, 30)
    finish("examples.sleep", TaskState.CANCELLED, 50)
    finish("examples.sleep", TaskState.FAILED, 90)  # outside every window
    finish("examples.fail", TaskState.FAILED, 3)

    html = admin_client.get(MONITOR).content.decode()

    sleep = {
        col: cell(html, "examples.sleep", col)
        for col in ("limit", "running", "queued", "waiting", "oldest-wait", "finished-5m",
                    "failed-5m", "finished-1h", "failed-1h")
    }  # fmt: skip
    assert sleep == {
        "limit": "2 / 3",
        "running": "1",
        "queued": "1",
        "waiting": "2 (1 delayed)",
        "oldest-wait": sleep["oldest-wait"],
        "finished-5m": "2",
        "failed-5m": "1",
        "finished-1h": "4",
        "failed-1h": "2",
    }
    assert re.fullmatch(r"7 min 0\d s", sleep["oldest-wait"]), sleep["oldest-wait"]
    assert cell(html, "batch.examples.fail", "failed-1h") == "1"
    assert cell(html, "batch.examples.sleep", "limit") == "2 / ∞"
    assert cell(html, "examples.noop", "waiting") == "0"
    assert cell(html, "examples.noop", "oldest-wait") == "-"


def test_running_tasks_show_progress_and_link_to_the_admin(admin_client: Client) -> None:
    alice = get_user_model().objects.create_user("alice")
    task = submit(
        "examples.progress",
        TaskState.RUNNING,
        owner=alice,
        description="import users",
        progress_percent=40,
        progress_message="200 of 500 users",
        worker="w1@host",
        started_at=ago(seconds=75),
    )

    html = admin_client.get(MONITOR).content.decode()

    running = html[html.index('id="batchtasks-running"') : html.index('id="batchtasks-failures"')]
    assert f'href="{reverse("admin:batchtasks_batchtask_change", args=[task.pk])}"' in running
    assert '<progress value="40" max="100"' in running
    text = " ".join(strip_tags(running).split())
    assert "40% 200 of 500 users" in text
    assert "import users" in text and "alice" in text and "w1@host" in text
    assert "1 min 15 s" in text or "1 min 16 s" in text


def test_running_tasks_show_their_parents_and_how_many_tasks_wait_for_them(
    admin_client: Client,
) -> None:
    a, b = (finish("examples.noop", TaskState.SUCCEEDED, 1) for _ in range(2))
    task = BatchTask.submit("examples.progress", {}, depends_on=[a, b])
    BatchTask.objects.filter(pk=task.pk).update(
        state=TaskState.RUNNING, started_at=ago(seconds=5), worker="w1@host"
    )
    waiting = [BatchTask.submit("examples.noop", {}, depends_on=[task]) for _ in range(2)]
    assert {t.state for t in waiting} == {TaskState.BLOCKED}
    lone = submit("examples.progress", TaskState.RUNNING, started_at=ago(seconds=9))

    html = admin_client.get(MONITOR).content.decode()

    running = html[html.index('id="batchtasks-running"') : html.index('id="batchtasks-failures"')]
    mine = re.search(rf'data-task-id="{task.pk}".*?</tr>', running, re.S)
    assert mine
    text = " ".join(strip_tags(mine.group(0)).split())
    assert f"after #{a.pk}, #{b.pk}" in text
    assert "2 tasks wait for it" in text
    other = re.search(rf'data-task-id="{lone.pk}".*?</tr>', running, re.S)
    assert other and "after #" not in other.group(0) and "wait for it" not in other.group(0)


def test_recent_failures_are_newest_first_with_a_short_message(admin_client: Client) -> None:
    older = finish("examples.fail", TaskState.FAILED, 10, error_type="KeyError", error_message="x")
    newer = finish(
        "examples.fail", TaskState.FAILED, 1, error_type="ValueError", error_message="y" * 500
    )
    for _ in range(21):
        finish("examples.fail", TaskState.FAILED, 30, error_type="OSError")

    html = admin_client.get(MONITOR).content.decode()

    failures = re.findall(r'class="batchtasks-failure" data-task-id="(\d+)"', html)
    assert failures[:2] == [str(newer.pk), str(older.pk)] and len(failures) == 20
    assert "y" * 200 + "…" in html and "y" * 201 not in html
    assert "ValueError" in html and "KeyError" in html


def test_the_chart_counts_finished_and_failed_tasks_per_minute(admin_client: Client) -> None:
    finish("examples.sleep", TaskState.SUCCEEDED, 0)
    finish("examples.fail", TaskState.FAILED, 0)
    finish("examples.sleep", TaskState.SUCCEEDED, 20.5)
    finish("examples.sleep", TaskState.SUCCEEDED, 75)  # more than an hour ago

    html = admin_client.get(MONITOR).content.decode()

    bars = re.findall(r'data-finished="(\d+)" data-failed="(\d+)"', html)
    assert len(bars) == 60
    assert ("2", "1") in bars[-2:]  # this minute (or the last, had it just turned)
    assert sum(int(f) for f, _ in bars) == 3 and sum(int(f) for _, f in bars) == 1
    assert "over the last hour: 3 finished, 1 of them failed." in html
    assert re.search(r"<title>\d\d:\d\d: 2 finished, 1 failed</title>", html)
    assert "<svg" in html and "<script" not in html[html.index("<svg") :]


def test_the_fragment_is_the_refreshable_part_alone(admin_client: Client) -> None:
    seen_worker("live@web1")

    fragment = admin_client.get(MONITOR, {"fragment": "1"})

    html = fragment.content.decode()
    assert html.lstrip().startswith('<div id="batchtasks-monitor-fragment">')
    assert "live@web1" in html and "<html" not in html
    assert "no-cache" in fragment["Cache-Control"]
    page = admin_client.get(MONITOR).content.decode()
    assert 'data-refresh-url="?fragment=1"' in page and "batchtasks/monitor.js" in page


def test_non_staff_and_anonymous_users_are_sent_to_the_admin_login(client: Client) -> None:
    login = reverse("admin:login")
    anonymous = client.get(MONITOR)
    client.force_login(get_user_model().objects.create_user("bob"))
    signed_in = client.get(MONITOR)

    for response in (anonymous, signed_in):
        assert response.status_code == 302
        assert response["Location"].startswith(f"{login}?next=")
    assert "batchtasks-monitor" not in client.get(MONITOR, follow=True).content.decode()


def test_staff_need_the_permission_to_view_batch_tasks(client: Client) -> None:
    staff = get_user_model().objects.create_user("clerk", is_staff=True)
    client.force_login(staff)
    refused = client.get(MONITOR)
    staff.user_permissions.add(Permission.objects.get(codename="view_batchtask"))
    client.force_login(get_user_model().objects.get(pk=staff.pk))

    assert refused.status_code == 403 and b"batchtasks-monitor" not in refused.content
    assert client.get(MONITOR).status_code == 200


def test_user_strings_stay_text(admin_client: Client) -> None:
    seen_worker(XSS)
    submit("examples.sleep", TaskState.RUNNING, description=XSS, progress_message=XSS)
    finish("examples.fail", TaskState.FAILED, 1, error_type=XSS, error_message=XSS)

    html = admin_client.get(MONITOR).content.decode()

    assert XSS not in html
    assert html.count("&lt;img src=x onerror=alert(1)&gt;") >= 5


def queries_of_a_view(client: Client) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(MONITOR).status_code == 200
    return len(queries)


def test_the_query_count_does_not_grow_with_the_rows(admin_client: Client) -> None:
    seen_worker("w1@a")
    submit("examples.sleep", TaskState.RUNNING)
    finish("examples.fail", TaskState.FAILED, 1)
    few = queries_of_a_view(admin_client)

    for i in range(15):
        seen_worker(f"w{i + 2}@b")
        submit("examples.progress", TaskState.RUNNING)
        submit("examples.sleep", TaskState.QUEUED)
        submit("examples.sleep")
        finish("examples.fail", TaskState.FAILED, i)
        finish("examples.noop", TaskState.SUCCEEDED, i)

    assert queries_of_a_view(admin_client) == few <= 13  # 11 for the monitor, 2 for the session
