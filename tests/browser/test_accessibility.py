"""The reference pages pass axe-core's accessibility rules with no serious or critical
violation: the home page with the running-tasks indicator (closed and with its tooltip
open), the sign-in page and the staff monitor (in the admin's light and dark themes). Each
page load asks for nothing that is not there: its icon is served, and no request is a 404.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from batchtasks import BatchTask, TaskState
from plugins.reports import EXPORT_PERMISSION
from tests.browser.test_indicator import INDICATOR, LABEL, TOOLTIP, submit, task_row
from tests.workers import wait_for

#: The impacts that fail a page (axe's others: "minor", "moderate").
SERIOUS = ("serious", "critical")
ICON = "/static/favicon.svg"


def serious_violations(page: Page) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now, one line each."""
    response = Axe().run(page).response
    return [
        f"{violation['id']} ({violation['impact']}): {violation['help']}; "
        f"at {[node['target'] for node in violation['nodes']]}"
        for violation in response["violations"]
        if violation["impact"] in SERIOUS
    ]


class NotFoundLog(logging.Handler):
    """The 404s the live server answered (``django.request`` logs each), including those
    of requests the browser makes on its own, which the page's events do not show."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "status_code", None) == 404:
            self.paths.append(record.getMessage())


@pytest.fixture
def server_not_found() -> Iterator[list[str]]:
    """The messages of the 404s the live server answers during the test."""
    handler = NotFoundLog()
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    yield handler.paths
    logger.removeHandler(handler)


def load(page: Page, path: str, server_not_found: list[str]) -> None:
    """Open ``path`` and check that the page's icon came and that nothing was a 404."""
    with page.expect_response(lambda response: response.url.endswith(ICON)) as icon:
        page.goto(path)
    assert icon.value.status == 200
    page.wait_for_load_state("load")
    assert page.not_found == []
    assert server_not_found == []


def test_the_home_page_and_its_indicator_open_by_keyboard_pass_axe(
    page: Page, login: Any, make_user: Any, server_not_found: list[str]
) -> None:
    login(page, make_user("alice", perms=[EXPORT_PERMISSION]))
    load(page, "/", server_not_found)
    expect(page.locator(INDICATOR)).to_have_attribute("data-polled", "true")
    assert serious_violations(page) == []

    # A task still waiting (progress bar) and one that ended (its state and a link).
    submit(page, "examples.progress", params={"steps": 1}, description="Nightly", run_after=3600)
    ended = submit(
        page, "examples.progress", params={"steps": 1}, description="Import", run_after=3600
    )
    expect(page.locator(LABEL)).to_have_text("2 tasks")
    BatchTask.objects.get(pk=ended["id"]).cancel()
    expect(task_row(page, ended)).to_contain_text("Cancelled")
    page.keyboard.press("Tab")
    expect(page.locator(f"{INDICATOR} button")).to_be_focused()
    expect(page.locator(TOOLTIP)).to_be_visible()

    assert serious_violations(page) == []
    assert page.not_found == []
    assert server_not_found == []


def test_the_sign_in_page_passes_axe(page: Page, server_not_found: list[str]) -> None:
    load(page, "/accounts/login/", server_not_found)

    assert serious_violations(page) == []


@pytest.mark.worker
def test_the_monitor_with_a_worker_running_and_failed_tasks_passes_axe_in_both_themes(
    page: Page, login: Any, make_user: Any, start_worker: Any, server_not_found: list[str]
) -> None:
    start_worker("axe", ["batch.examples.fail", "batch.examples.progress"], concurrency=2)
    failed = BatchTask.submit("examples.fail", {"message": "disk full"}, description="Import")
    running = BatchTask.submit(
        "examples.progress", {"steps": 400, "delay": 0.25}, description="Nightly"
    )
    wait_for(lambda: BatchTask.objects.get(pk=failed.pk).state == TaskState.FAILED)
    wait_for(lambda: BatchTask.objects.get(pk=running.pk).progress_percent > 0)
    login(page, make_user("operator", staff=True, perms=["batchtasks.view_batchtask"]))
    try:
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            load(page, "/batchtasks/monitor/", server_not_found)
            expect(page.locator("tr.batchtasks-running-task")).to_contain_text("Nightly")
            expect(page.locator("body")).to_contain_text("disk full")

            assert serious_violations(page) == [], f"in the {scheme} theme"
    finally:
        running.cancel()  # it stops at its next step: the worker then shuts down at once
