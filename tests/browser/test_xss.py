"""Markup in a task's description, progress message and error shows as text on the
monitor and in the admin, before and after their live updates, and runs nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from batchtasks import BatchTask, TaskState
from tests.workers import wait_for

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture
def hostile_tasks(start_worker: Any) -> Iterator[tuple[BatchTask, BatchTask]]:
    """A task that failed with the markup as its message, and a running one reporting it
    as its progress."""
    start_worker("xss", ["batch.examples.fail", "batch.examples.progress"], concurrency=2)
    failed = BatchTask.submit("examples.fail", {"message": HOSTILE}, description=HOSTILE)
    running = BatchTask.submit(
        "examples.progress",
        {"steps": 400, "delay": 0.25, "message": HOSTILE},
        description=HOSTILE,
    )
    wait_for(lambda: BatchTask.objects.get(pk=failed.pk).state == TaskState.FAILED)
    wait_for(lambda: HOSTILE in BatchTask.objects.get(pk=running.pk).progress_message)
    yield failed, running
    running.cancel()  # it stops at its next step: the worker then shuts down at once


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
    expect(row.locator(".batchtasks-message")).to_contain_text(f"{HOSTILE} step")
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
    expect(text.locator(".batchtasks-progress-text")).to_contain_text(f"% {HOSTILE} step")
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
    expect(admin_page.locator(".field-progress_bar .batchtasks-progress-text")).to_contain_text(
        f"% {HOSTILE} step"
    )
    assert_inert(admin_page)
