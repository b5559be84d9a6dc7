"""The running-tasks indicator in a real browser: it appears when a task is submitted, follows
its progress, announces the end exactly once, and shows user strings as inert text."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.template import Context, Template
from django.test import RequestFactory
from playwright.sync_api import Page, expect

from batchtasks import BatchTask

INDICATOR = "#batchtasks-indicator"
LABEL = f"{INDICATOR} .batchtasks-indicator__label"
TOOLTIP = "#batchtasks-indicator-popup"
STATUS = "#batchtasks-indicator-status"
HOSTILE = "<img src=x onerror=alert(1)>"

# Registered before the page's own scripts run, so no event is missed.
RECORD_EVENTS = """
window.__events = [];
for (const name of ["batchtask:update", "batchtask:finished"]) {
  document.addEventListener(name, (event) => window.__events.push({event: name, ...event.detail}));
}
"""

# What a page of the project does to submit: POST with the CSRF token, then tell the indicator.
SUBMIT = """async (body) => {
  const response = await fetch("/batchtasks/api/tasks/", {
    method: "POST",
    headers: {"Content-Type": "application/json", "X-Requested-With": "XMLHttpRequest",
              "X-CSRFToken": document.querySelector("[name=csrfmiddlewaretoken]").value},
    body: JSON.stringify(body),
  });
  const task = await response.json();
  if (response.status !== 201) {
    throw new Error(`submit answered ${response.status}: ${JSON.stringify(task)}`);
  }
  document.dispatchEvent(new CustomEvent("batchtask:submitted", {detail: task}));
  return task;
}"""


@pytest.fixture
def home(page: Page, login: Any, make_user: Any, live_media_root: Path) -> Page:
    """Alice's home page, its indicator having answered its first poll."""
    login(page, make_user("alice"))
    page.add_init_script(RECORD_EVENTS)
    page.goto("/")
    expect(page.locator(INDICATOR)).to_have_attribute("data-polled", "true")
    return page


def submit(page: Page, type_name: str, **body: Any) -> dict[str, Any]:
    return page.evaluate(SUBMIT, {"type": type_name, **body})


def task_row(page: Page, task: dict[str, Any]) -> Any:
    return page.locator(f'{INDICATOR} li[data-task-id="{task["id"]}"]')


def finished_events(page: Page, task: dict[str, Any]) -> list[dict[str, Any]]:
    return page.evaluate(
        "id => window.__events.filter(e => e.event === 'batchtask:finished' && e.Id === id)",
        task["id"],
    )


def wait_finished(page: Page, task: dict[str, Any]) -> dict[str, Any]:
    page.wait_for_function(
        "id => window.__events.some(e => e.event === 'batchtask:finished' && e.Id === id)",
        arg=task["id"],
        timeout=60_000,
    )
    return finished_events(page, task)[0]


@pytest.mark.worker
def test_a_submitted_task_shows_within_two_seconds_advances_and_finishes_once(
    home: Page, start_worker: Any
) -> None:
    start_worker("w", ["batch.examples.progress"], concurrency=1)
    started = time.monotonic()
    task = submit(
        home, "examples.progress", params={"steps": 8, "delay": 0.75}, description="Crunch"
    )
    left_ms = 2000 - (time.monotonic() - started) * 1000
    expect(home.locator(LABEL)).to_have_text("Crunch", timeout=max(left_ms, 1))

    percent = task_row(home, task).locator(".batchtasks-indicator__percent")
    expect(percent).to_have_text(re.compile(r"^[1-9]\d*\s?%$"), timeout=15_000)
    first = percent.text_content()
    expect(percent).not_to_have_text(first or "", timeout=15_000)

    finished = wait_finished(home, task)
    assert finished["State"] == 4
    assert finished["StateName"] == "succeeded"
    assert finished["Response"] == {"steps": 8}
    expect(task_row(home, task).locator(".batchtasks-indicator__state")).to_have_text("Succeeded")
    expect(home.locator(INDICATOR)).to_be_hidden(timeout=20_000)

    # A later change re-sends the finished task: it is not announced again.
    submit(home, "examples.progress", params={"steps": 1}, description="Next", run_after=3600)
    expect(home.locator(LABEL)).to_have_text("Next")
    assert len(finished_events(home, task)) == 1
    # Nor after a reload, when it was already final in the first poll.
    home.reload()
    expect(home.locator(INDICATOR)).to_have_attribute("data-polled", "true")
    assert finished_events(home, task) == []


def test_two_unfinished_tasks_show_their_count_and_both_names(home: Page) -> None:
    first = submit(home, "examples.progress", params={"steps": 1}, description="First nap")
    expect(home.locator(LABEL)).to_have_text("First nap")
    second = submit(home, "examples.progress", params={"steps": 1}, description="Second nap")

    expect(home.locator(LABEL)).to_have_text("2 tasks")
    expect(task_row(home, first)).to_contain_text("First nap")
    expect(task_row(home, second)).to_contain_text("Second nap")
    expect(task_row(home, second).locator(".batchtasks-indicator__state")).to_have_text("Queued")


@pytest.mark.worker
def test_a_failed_task_is_announced_with_state_5_and_its_error(
    home: Page, start_worker: Any
) -> None:
    start_worker("w", ["batch.examples.fail"], concurrency=1)
    task = submit(home, "examples.fail", params={"message": "disk full"})

    finished = wait_finished(home, task)
    assert (finished["State"], finished["StateName"]) == (5, "failed")
    assert finished["Error"] == {"Type": "ValueError", "Message": "disk full"}
    row = task_row(home, task)
    expect(row.locator(".batchtasks-indicator__error")).to_have_text("disk full")
    expect(row.locator("a")).to_have_attribute("href", re.compile(rf"/api/tasks/{task['id']}/$"))
    expect(home.locator(INDICATOR)).to_have_class(re.compile(r"\bis-failed\b"))


@pytest.mark.worker
def test_markup_in_a_description_progress_and_an_error_shows_as_text_and_runs_nothing(
    home: Page, start_worker: Any
) -> None:
    start_worker("w", ["batch.examples.fail", "batch.examples.progress"], concurrency=2)
    running = submit(
        home,
        "examples.progress",
        params={"steps": 400, "delay": 0.25, "message": HOSTILE},
        description=HOSTILE,
    )
    expect(home.locator(LABEL)).to_have_text(HOSTILE)
    failed = submit(home, "examples.fail", params={"message": HOSTILE}, description=HOSTILE)
    wait_finished(home, failed)

    row = task_row(home, running)
    expect(row.locator(".batchtasks-indicator__name")).to_have_text(HOSTILE)
    expect(row.locator(".batchtasks-indicator__message")).to_contain_text(f"{HOSTILE} step")
    expect(task_row(home, failed).locator(".batchtasks-indicator__error")).to_have_text(HOSTILE)
    expect(home.locator(f"{INDICATOR} img")).to_have_count(0)
    assert home.dialogs == []
    BatchTask.objects.get(pk=running["id"]).cancel()  # the worker then stops at once


def test_the_tooltip_shows_on_keyboard_focus_describes_the_button_and_escape_hides_it(
    home: Page,
) -> None:
    submit(home, "examples.progress", params={"steps": 1}, description="Nightly", run_after=3600)
    expect(home.locator(LABEL)).to_have_text("Nightly")
    button = home.locator(f"{INDICATOR} button")
    tooltip = home.locator(TOOLTIP)
    expect(tooltip).to_be_hidden()

    home.keyboard.press("Tab")  # the indicator is the first thing in the page to focus
    expect(button).to_be_focused()
    expect(tooltip).to_be_visible()
    expect(tooltip).to_have_attribute("role", "tooltip")
    expect(button).to_have_accessible_name("Your background tasks: Nightly")
    expect(button).to_have_accessible_description(re.compile(r"^Nightly\s+New\s+0\s?%"))

    home.keyboard.press("Escape")
    expect(tooltip).to_be_hidden()
    expect(button).to_be_focused()
    # Back with the focus: shown again.
    home.keyboard.press("Tab")
    expect(button).not_to_be_focused()
    home.keyboard.press("Shift+Tab")
    expect(button).to_be_focused()
    expect(tooltip).to_be_visible()

    # Shown by the pointer (the focus elsewhere): Escape hides it too.
    home.locator("main h2").click()
    button.hover()
    expect(tooltip).to_be_visible()
    home.keyboard.press("Escape")
    expect(tooltip).to_be_hidden()


def test_a_task_that_appears_and_its_end_are_announced_politely(home: Page) -> None:
    status = home.locator(STATUS)
    expect(status).to_have_attribute("aria-live", "polite")
    expect(status).to_have_attribute("role", "status")
    # There, and rendered, while the indicator itself is hidden: a live region must be
    # present before the text it is to announce.
    expect(home.locator(INDICATOR)).to_be_hidden()
    assert status.evaluate("element => element.checkVisibility()")
    expect(status).to_have_text("")

    task = submit(
        home, "examples.progress", params={"steps": 1}, description="Nightly", run_after=3600
    )
    expect(status).to_have_text("Nightly: New")
    BatchTask.objects.get(pk=task["id"]).cancel()
    expect(status).to_have_text("Nightly: Cancelled")
    expect(home.locator(LABEL)).to_have_text("Nightly: Cancelled")


def test_a_page_whose_session_ended_stops_polling_without_a_word(home: Page) -> None:
    requests: list[str] = []
    home.on("request", lambda request: requests.append(request.url))
    home.context.clear_cookies()
    with home.expect_response(lambda response: "/tasks/active/" in response.url) as answer:
        home.evaluate("window.batchtasks.refresh()")
    assert answer.value.status == 401

    requests.clear()
    # A refresh would fetch at once, before the fetch that follows it.
    home.evaluate("async () => { window.batchtasks.refresh(); await fetch('/admin/login/'); }")
    assert [url for url in requests if "/batchtasks/" in url or "/admin/" in url] == [
        f"{home.url}admin/login/"
    ]
    expect(home.locator(INDICATOR)).to_be_hidden()
    assert home.dialogs == []


def test_the_indicator_renders_nothing_for_anonymous_visitors() -> None:
    request = RequestFactory().get("/")
    request.user = AnonymousUser()
    html = Template("{% load batchtasks %}{% batchtasks_indicator %}").render(
        Context({"request": request})
    )
    assert html.strip() == ""


def test_the_indicator_of_a_signed_in_user_polls_the_active_tasks(make_user: Any) -> None:
    request = RequestFactory().get("/")
    request.user = make_user("erin")
    html = Template("{% load batchtasks %}{% batchtasks_indicator %}").render(
        Context({"request": request})
    )
    assert 'data-poll-url="/batchtasks/api/tasks/active/"' in html
    assert re.search(r'<script src="[^"]*batchtasks/indicator\.js" defer>', html)
