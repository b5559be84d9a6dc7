"""Markup in a task's description, progress message and error shows as text on the
monitor and in the admin, before and after their live updates, and runs nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db.models.functions import Now
from playwright.sync_api import Page, expect

from batchtasks import BatchTask, TaskState
from tests.workers import wait_for

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture
def hostile_tasks(start_worker: Any) -> tuple[BatchTask, BatchTask]:
    """A task that failed with the markup as its message, and a running one showing it."""
    start_worker("xss", ["batch.examples.fail"], concurrency=1)
    failed = BatchTask.submit("examples.fail", {"message": HOSTILE}, description=HOSTILE)
    running = BatchTask.submit(
        "examples.sleep", {"seconds": 1}, description=HOSTILE, run_after=timedelta(hours=1)
    )
    # No plugin reports a message of our choosing: this one is written as a worker would.
    BatchTask.objects.filter(pk=running.pk).update(
        state=TaskState.RUNNING, progress_percent=30, progress_message=HOSTILE, started_at=Now()
    )
    wait_for(lambda: BatchTask.objects.get(pk=failed.pk).state == TaskState.FAILED)
    return failed, running


@pytest.fixture
def admin_page(page: Page, login: Any, make_user: Any) -> Page:
    login(page, make_user("root", superuser=True))
    return page


def assert_inert(page: Page) -> None:
    expect(page.locator('img[src="x"]')).to_have_count(0)
    assert page.dialogs == []
    assert page.console_errors == []


@pytest.mark.worker
def test_the_monitor_shows_markup_as_text(admin_page: Page, hostile_tasks: Any) -> None:
    failed, running = hostile_tasks
    admin_page.goto("/batchtasks/monitor/")
    # Wait for a refresh to have swapped the fragment in: the old node is gone.
    admin_page.evaluate("document.getElementById('batchtasks-monitor-fragment').dataset.old = 1")
    fresh = admin_page.locator("#batchtasks-monitor-fragment:not([data-old])")
    expect(fresh).to_have_count(1, timeout=10_000)

    row = admin_page.locator(f'tr.batchtasks-running-task[data-task-id="{running.pk}"]')
    expect(row.locator(".batchtasks-description")).to_have_text(HOSTILE)
    expect(row.locator(".batchtasks-message")).to_have_text(HOSTILE)
    failure = admin_page.locator(f'tr.batchtasks-failure[data-task-id="{failed.pk}"]')
    expect(failure.locator(".batchtasks-error-message")).to_have_text(HOSTILE)
    assert_inert(admin_page)


@pytest.mark.worker
def test_the_admin_list_shows_markup_as_text(admin_page: Page, hostile_tasks: Any) -> None:
    running = hostile_tasks[1]
    with admin_page.expect_response(lambda r: "/batchtasks/api/tasks/" in r.url):
        admin_page.goto("/admin/batchtasks/batchtask/")  # and admin.js's first poll

    rows = admin_page.locator("#result_list tbody tr")
    expect(rows.filter(has_text=HOSTILE)).to_have_count(2)
    text = admin_page.locator(f'.batchtasks-progress[data-task-id="{running.pk}"]')
    expect(text.locator(".batchtasks-progress-text")).to_have_text(f"30% {HOSTILE}")
    assert_inert(admin_page)


@pytest.mark.worker
def test_the_admin_pages_of_the_tasks_show_markup_as_text(
    admin_page: Page, hostile_tasks: Any
) -> None:
    failed, running = hostile_tasks

    admin_page.goto(f"/admin/batchtasks/batchtask/{failed.pk}/change/")
    expect(admin_page.locator(".field-description .readonly")).to_have_text(HOSTILE)
    expect(admin_page.locator(".field-error_display pre")).to_contain_text(f"ValueError: {HOSTILE}")
    expect(admin_page.locator(".field-parameters_display pre")).to_contain_text(HOSTILE)
    assert_inert(admin_page)

    admin_page.goto(f"/admin/batchtasks/batchtask/{running.pk}/change/")
    expect(admin_page.locator(".field-progress_bar .batchtasks-progress-text")).to_have_text(
        f"30% {HOSTILE}"
    )
    assert_inert(admin_page)
