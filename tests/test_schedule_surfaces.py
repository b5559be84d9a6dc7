"""Schedules in the admin (checked on save, re-timed from the database's clock, settings
rows read-only but for pausing) and on the staff monitor."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from batchtasks.db.sql import database_now
from batchtasks.models import BatchTaskSchedule
from batchtasks.services.schedule_rows import sync_schedules
from batchtasks.services.schedules import run_due

pytestmark = pytest.mark.usefixtures("definitions")
ADD = reverse("admin:batchtasks_batchtaskschedule_add")


def form(**fields: Any) -> dict[str, Any]:
    values = {
        "name": "nightly",
        "type_name": "examples.noop",
        "description": "",
        "cron": "30 2 * * *",
        "every": "",
        "timezone": "Europe/Oslo",
        "enabled": "on",
        "params": "{}",
        "owner": "",
        "priority": "",
        "catch_up": "latest",
        "catch_up_limit": "100",
    }
    return {k: v for k, v in {**values, **fields}.items() if v is not None}


def test_a_schedule_added_in_the_admin_gets_its_next_tick_from_the_database_clock(
    admin_client: Client,
) -> None:
    response = admin_client.post(ADD, form())
    assert response.status_code == 302, response.content.decode()[:2000]
    row = BatchTaskSchedule.objects.get(name="nightly")
    assert row.source == "admin" and row.next_run_at is not None
    assert row.next_run_at > database_now("default")
    assert row.next_run_at.astimezone(row.timing.zone).strftime("%H:%M") == "02:30"


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"cron": "99 * * * *"}, "is not a cron expression"),
        ({"timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"cron": "", "every": ""}, "exactly one of cron"),
        ({"type_name": "examples.nope"}, "Unknown task type"),
        ({"type_name": "examples.progress", "params": '{"steps": 0}'}, "parameters"),
    ],
)
def test_the_admin_refuses_a_schedule_that_cannot_tick_or_submit(
    admin_client: Client, fields: dict[str, Any], says: str
) -> None:
    response = admin_client.post(ADD, form(**fields))
    assert response.status_code == 200
    assert says in response.content.decode()
    assert not BatchTaskSchedule.objects.exists()


def test_a_settings_schedule_is_read_only_in_the_admin_but_for_pausing(
    admin_client: Client, settings: Any
) -> None:
    settings.BATCHTASKS = {
        **settings.BATCHTASKS,
        "SCHEDULES": {"heartbeat": {"type": "examples.noop", "every": 2}},
    }
    [row] = sync_schedules()
    url = reverse("admin:batchtasks_batchtaskschedule_change", args=[row.pk])
    page = admin_client.get(url).content.decode()
    assert 'name="enabled"' in page and 'name="every"' not in page
    response = admin_client.post(url, {"enabled": ""})
    assert response.status_code == 302
    row.refresh_from_db()
    assert (row.enabled, row.every, row.next_run_at) == (False, 2, None)


def test_the_monitor_lists_schedules_with_next_and_last_run_and_their_task(
    admin_client: Client,
) -> None:
    due = datetime(2026, 1, 1, tzinfo=UTC)
    BatchTaskSchedule.objects.create(
        name="hourly<b>", type_name="examples.noop", every=3600, next_run_at=due
    )
    [task_id] = run_due().submitted
    html = admin_client.get(reverse("batchtasks:monitor")).content.decode()
    start = html.index('data-schedule="hourly&lt;b&gt;"')
    row = html[start : html.index("</tr>", start)]
    assert "every 3600 s" in row and f"#{task_id}" in row
    assert reverse("admin:batchtasks_batchtask_change", args=[task_id]) in row
