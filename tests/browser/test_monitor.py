"""The staff monitor in a real browser: it shows the live worker and follows a running
task's progress without a reload."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from batchtasks import BatchTask, TaskState
from tests.browser.pages import MARK, SAME_PAGE
from tests.workers import wait_for

MONITOR = "/batchtasks/monitor/"

PERCENT_ABOVE = """([id, floor]) => {
  const el = document.querySelector(
    `tr.batchtasks-running-task[data-task-id="${id}"] .batchtasks-percent`);
  return el !== null && parseInt(el.textContent, 10) > floor;
}"""


@pytest.fixture
def monitor(page: Page, login: Any, make_user: Any) -> Page:
    login(page, make_user("operator", staff=True, perms=["batchtasks.view_batchtask"]))
    return page


def shown_percent(page: Page, task: BatchTask) -> int:
    row = page.locator(f'tr.batchtasks-running-task[data-task-id="{task.pk}"]')
    expect(row.locator(".batchtasks-percent")).to_have_text(re.compile(r"^\d+%$"))
    return int((row.locator(".batchtasks-percent").text_content() or "0").rstrip("%"))


@pytest.mark.worker
def test_the_monitor_shows_the_live_worker_and_follows_a_tasks_progress(
    monitor: Page, start_worker: Any
) -> None:
    worker = start_worker("mon", ["batch.examples.progress"], concurrency=1)
    monitor.goto(MONITOR)
    monitor.evaluate(MARK)

    row = monitor.locator(f'tr.batchtasks-worker[data-worker="{worker.hostname}"]')
    expect(row).to_contain_text("Online")
    expect(row).to_contain_text(str(worker.pid))
    expect(row).to_contain_text(re.compile(r"\d+ s ago"))

    # Long enough (15 s) that a refresh or two still find it running after the first.
    task = BatchTask.submit(
        "examples.progress", {"steps": 30, "delay": 0.5}, description="Nightly import"
    )
    running = monitor.locator(f'tr.batchtasks-running-task[data-task-id="{task.pk}"]')
    expect(running).to_contain_text("Nightly import", timeout=20_000)
    expect(running.locator("a")).to_have_attribute(
        "href", f"/admin/batchtasks/batchtask/{task.pk}/change/"
    )
    first = shown_percent(monitor, task)
    monitor.wait_for_function(PERCENT_ABOVE, arg=[task.pk, first], timeout=20_000)
    expect(running.locator(".batchtasks-message")).to_have_text(re.compile(r"^step \d+ of 30$"))

    wait_for(lambda: BatchTask.objects.get(pk=task.pk).state == TaskState.SUCCEEDED)
    expect(running).to_have_count(0, timeout=10_000)
    expect(monitor.locator(".batchtasks-count-running")).to_have_text("0")
    finished = monitor.locator('[data-name="examples.progress"] [data-col="finished-5m"]')
    expect(finished).to_have_text("1")
    assert monitor.evaluate(SAME_PAGE) is True
    assert monitor.console_errors == []


def test_the_monitor_is_for_staff_only(page: Page, login: Any, make_user: Any) -> None:
    login(page, make_user("visitor"))

    page.goto(MONITOR)

    expect(page).to_have_url(re.compile(r"/admin/login/\?next=/batchtasks/monitor/"))
    expect(page.locator("#batchtasks-monitor")).to_have_count(0)


SET_HIDDEN = """hidden => {
  Object.defineProperty(document, "hidden", {configurable: true, get: () => hidden});
  Object.defineProperty(document, "visibilityState",
                        {configurable: true, get: () => (hidden ? "hidden" : "visible")});
  document.dispatchEvent(new Event("visibilitychange"));
}"""


def test_the_monitor_pauses_while_its_tab_is_hidden(monitor: Page) -> None:
    monitor.clock.install()  # the page's timers run only when the test says so
    monitor.goto(MONITOR)
    status = monitor.locator(".batchtasks-live-text")
    with monitor.expect_request("**/batchtasks/monitor/?fragment=1"):
        monitor.clock.run_for(3_500)
    expect(monitor.locator("#batchtasks-monitor")).to_have_attribute("data-live", "live")

    refreshes: list[str] = []
    monitor.on("request", lambda r: refreshes.append(r.url) if "fragment=1" in r.url else None)
    monitor.evaluate(SET_HIDDEN, True)
    monitor.clock.run_for(30_000)
    monitor.evaluate("() => 0")  # a round trip: any request made by now has been seen

    assert refreshes == []
    expect(status).to_have_text("Paused while this tab is hidden.")
    with monitor.expect_request("**/batchtasks/monitor/?fragment=1"):
        monitor.evaluate(SET_HIDDEN, False)  # shown again: refreshed at once
    expect(status).to_have_text("Live: refreshes every few seconds.")
