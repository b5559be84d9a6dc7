"""The Prometheus endpoint: figures that match the database during a real run, and only
for the scrapers ``METRICS_AUTH`` lets in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.db.models.functions import Now
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from prometheus_client.parser import text_string_to_metric_families

from batchtasks import BatchTask, TaskState
from batchtasks.core.conf import BatchTasksSettings
from batchtasks.core.exceptions import ConfigurationError
from tests.conftest import set_limit
from tests.workers import Worker, wait_for

METRICS = reverse("batchtasks:metrics")
SLEEP, SLEEP_QUEUE = "examples.sleep", "batch.examples.sleep"


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: Client, **headers: Any) -> Samples:
    """The scrape's samples: ``(name, labels) -> value``."""
    response = client.get(METRICS, **headers)
    assert response.status_code == 200, response.content
    text = response.content.decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(f"batchtasks_{name}", frozenset(labels.items()))]


def count(state: str, **fields: Any) -> int:
    return BatchTask.objects.filter(definition__name=SLEEP, state=state, **fields).count()


def with_metrics(**options: Any) -> Any:
    return override_settings(BATCHTASKS={**settings.BATCHTASKS, **options})


@pytest.fixture
def cancel_sleepers() -> Iterator[None]:
    yield
    for task in BatchTask.objects.filter(definition__name=SLEEP).unfinished():
        task.cancel()


@pytest.mark.worker
def test_a_scrape_during_a_run_matches_the_database(
    start_worker: Callable[..., Worker], admin_client: Client, cancel_sleepers: None
) -> None:
    set_limit(SLEEP, 2)
    start_worker("wm", queues=[SLEEP_QUEUE], concurrency=3)
    first = BatchTask.submit(SLEEP, {"seconds": 0.2})
    assert first.wait(timeout=60).state == TaskState.SUCCEEDED
    BatchTask.submit_many(SLEEP, [{"seconds": 600}] * 5)
    wait_for(lambda: count(TaskState.RUNNING) == 2, timeout=60)

    got = scrape(admin_client)

    # The limit holds two running; three wait. Nothing changes while they sleep.
    labels = {"type": SLEEP, "queue": SLEEP_QUEUE}
    for state in (TaskState.NEW, TaskState.QUEUED, TaskState.RUNNING):
        assert value(got, "tasks", **labels, state=state) == count(state)
    assert value(got, "queue_waiting", queue=SLEEP_QUEUE) == count(TaskState.NEW) == 3
    in_flight = count(TaskState.QUEUED) + count(TaskState.RUNNING)
    assert value(got, "queue_in_flight", queue=SLEEP_QUEUE) == in_flight == 2
    assert value(got, "type_in_flight", **labels) == in_flight
    assert value(got, "type_in_flight_limit", **labels) == 2
    assert value(got, "queue_oldest_wait_seconds", queue=SLEEP_QUEUE) > 0
    # The short task: one finish, one attempt, its run time in the histogram.
    assert value(got, "finished_last_hour", **labels, state="succeeded") == 1
    assert value(got, "attempts_last_hour", **labels, outcome="succeeded") == 1
    assert value(got, "run_seconds_last_hour_gcount", **labels) == 1
    assert value(got, "run_seconds_last_hour_bucket", **labels, le="+Inf") == 1
    assert value(got, "retries_last_hour", **labels) == 0
    assert value(got, "workers_online") == 1
    assert value(got, "worker_processes") == 3


@pytest.mark.worker
def test_a_retried_task_shows_its_failed_attempt_and_its_retry(
    start_worker: Callable[..., Worker], admin_client: Client
) -> None:
    start_worker("wr", queues=["batch.examples.flaky"])
    task = BatchTask.submit("examples.flaky", {"succeed_on": 3})
    assert task.wait(timeout=60).state == TaskState.SUCCEEDED

    got = scrape(admin_client)

    labels = {"type": "examples.flaky", "queue": "batch.examples.flaky"}
    assert value(got, "attempts_last_hour", **labels, outcome="failed") == 2
    assert value(got, "attempts_last_hour", **labels, outcome="succeeded") == 1
    assert value(got, "retries_last_hour", **labels) == 2  # attempts 2 and 3
    assert value(got, "finished_last_hour", **labels, state="succeeded") == 1
    assert value(got, "run_seconds_last_hour_gcount", **labels) == 3


@pytest.mark.django_db
def test_finishes_older_than_the_hour_stay_out_of_the_window(
    admin_client: Client,
) -> None:
    for minutes, state in (
        (5, TaskState.FAILED),
        (50, TaskState.FAILED),
        (70, TaskState.SUCCEEDED),
    ):
        task = BatchTask.submit(SLEEP, {"seconds": 1}, run_after=timedelta(hours=1))
        finished = Now() - timedelta(minutes=minutes)
        BatchTask.objects.filter(pk=task.pk).update(state=state, finished_at=finished)

    got = scrape(admin_client)

    labels = {"type": SLEEP, "queue": SLEEP_QUEUE}
    assert value(got, "finished_last_hour", **labels, state="failed") == 2
    assert (
        ("batchtasks_finished_last_hour", frozenset({**labels, "state": "succeeded"}.items()))
    ) not in got
    assert value(got, "tasks", **labels, state="new") == 0


@pytest.mark.django_db
def test_anonymous_and_non_staff_users_get_no_figures(client: Client) -> None:
    assert client.get(METRICS).status_code == 403
    user = get_user_model().objects.create_user("plain", password="pw")
    client.force_login(user)
    refused = client.get(METRICS)
    assert refused.status_code == 403 and b"batchtasks_" not in refused.content


@pytest.mark.django_db
def test_a_staff_session_may_scrape_by_default(admin_client: Client) -> None:
    assert "batchtasks_workers_online" in {name for name, _ in scrape(admin_client)}


@pytest.mark.django_db
def test_staff_need_view_batchtask_to_scrape_as_the_monitor_does(client: Client) -> None:
    staff = get_user_model().objects.create_user("clerk", password="pw", is_staff=True)
    client.force_login(staff)

    refused = client.get(METRICS)
    staff.user_permissions.add(Permission.objects.get(codename="view_batchtask"))
    client.force_login(get_user_model().objects.get(pk=staff.pk))  # no cached permissions

    assert refused.status_code == 403 and b"batchtasks_" not in refused.content
    assert "batchtasks_workers_online" in {name for name, _ in scrape(client)}


@pytest.mark.django_db
def test_a_bearer_token_lets_a_scraper_in_and_a_wrong_one_is_refused(
    client: Client, admin_client: Client
) -> None:
    with with_metrics(METRICS_AUTH=["token"], METRICS_TOKEN="s3cret-token"):
        assert scrape(client, HTTP_AUTHORIZATION="Bearer s3cret-token")
        for header in ("Bearer s3cret-tokem", "Bearer ", "Basic s3cret-token"):
            refused = client.get(METRICS, HTTP_AUTHORIZATION=header)
            assert refused.status_code == 401 and b"batchtasks_" not in refused.content
            assert refused["WWW-Authenticate"].startswith("Bearer")
        # Staff sessions are not among the methods allowed now.
        assert admin_client.get(METRICS).status_code == 401


@pytest.mark.django_db
def test_clients_in_the_allowed_networks_may_scrape_and_forwarded_headers_do_not_count(
    client: Client,
) -> None:
    with with_metrics(METRICS_AUTH=["ip"], METRICS_ALLOW=["10.0.0.0/8", "2001:db8::/32"]):
        assert scrape(client, REMOTE_ADDR="10.1.2.3")
        assert scrape(client, REMOTE_ADDR="2001:db8::7")
        assert client.get(METRICS, REMOTE_ADDR="192.168.1.5").status_code == 403
        spoofed = client.get(METRICS, REMOTE_ADDR="192.168.1.5", HTTP_X_FORWARDED_FOR="10.1.2.3")
        assert spoofed.status_code == 403


def test_bad_metrics_settings_are_refused_with_the_fix() -> None:
    with pytest.raises(ConfigurationError, match="METRICS_TOKEN is not set"):
        BatchTasksSettings.from_dict({"METRICS_AUTH": ["token"]})
    with pytest.raises(ConfigurationError, match="networks like"):
        BatchTasksSettings.from_dict({"METRICS_AUTH": ["ip"], "METRICS_ALLOW": ["10.0.0.300/8"]})
    with pytest.raises(ConfigurationError, match="'staff', 'token', 'ip'"):
        BatchTasksSettings.from_dict({"METRICS_AUTH": "staff"})


@pytest.mark.django_db
def test_a_scrape_runs_the_same_few_queries_however_many_tasks_there_are(
    admin_client: Client,
) -> None:
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            scrape(admin_client)
        return len(captured)

    before = queries()
    BatchTask.submit_many(SLEEP, [{"seconds": 1}] * 30, run_after=timedelta(hours=1))
    BatchTask.submit_many("examples.noop", [None] * 30)
    assert queries() == before
