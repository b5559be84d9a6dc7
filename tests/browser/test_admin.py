"""The batch task admin in a real browser: actions on running and waiting tasks, and
progress bars that follow running tasks without a reload."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from batchtasks import BatchTask, TaskState
from tests.browser.pages import MARK, SAME_PAGE
from tests.workers import wait_for

CHANGELIST = "/admin/batchtasks/batchtask/"

PROGRESS_ABOVE = """([id, floor]) => {
  const bar = document.querySelector(`.batchtasks-progress[data-task-id="${id}"] progress`);
  return bar !== null && bar.value > floor;
}"""


@pytest.fixture
def admin_page(page: Page, login: Any, make_user: Any) -> Page:
    login(page, make_user("root", superuser=True))
    return page


def run_action(page: Page, action: str, *tasks: BatchTask) -> None:
    for task in tasks:
        page.locator(f'input.action-select[value="{task.pk}"]').check()
    page.locator('select[name="action"]').select_option(action)
    page.locator('button[name="index"]').click()


def state_of(task: BatchTask) -> str:
    return BatchTask.objects.values_list("state", flat=True).get(pk=task.pk)


@pytest.mark.worker
def test_the_cancel_action_stops_a_running_task(admin_page: Page, start_worker: Any) -> None:
    start_worker("adm", ["batch.examples.sleep"], concurrency=1)
    task = BatchTask.submit("examples.sleep", {"seconds": 60}, description="Long nap")
    wait_for(lambda: state_of(task) == TaskState.RUNNING)
    admin_page.goto(CHANGELIST)
    badge = admin_page.locator(f'.batchtasks-state[data-task-id="{task.pk}"]')
    expect(badge).to_have_text("Running")

    run_action(admin_page, "cancel_tasks", task)

    expect(admin_page.locator(".messagelist")).to_contain_text("1 running task asked to stop.")
    admin_page.evaluate(MARK)
    # The worker stops the task; the badge follows without a reload.
    expect(badge).to_have_text("Cancelled", timeout=30_000)
    expect(badge).to_have_class(re.compile(r"\bbatchtasks-state--cancelled\b"))
    assert state_of(task) == TaskState.CANCELLED
    assert admin_page.evaluate(SAME_PAGE) is True
    assert admin_page.console_errors == []


def test_set_priority_asks_for_the_value_and_moves_a_waiting_task(admin_page: Page) -> None:
    waiting = BatchTask.submit("examples.sleep", {"seconds": 1}, run_after=timedelta(hours=1))
    admin_page.goto(CHANGELIST)

    run_action(admin_page, "set_priority", waiting)

    expect(admin_page.locator("h1")).to_have_text("Set the priority of batch tasks")
    expect(admin_page.locator(".batchtasks-set-priority-summary")).to_contain_text(
        "so they will move: 1."
    )
    admin_page.locator('input[name="priority"]').fill("75")
    admin_page.locator('input[name="apply"]').click()

    expect(admin_page.locator(".messagelist")).to_have_text("1 task moved to priority 75.")
    expect(admin_page).to_have_url(re.compile(r"/admin/batchtasks/batchtask/$"))
    assert BatchTask.objects.get(pk=waiting.pk).priority == 75


def test_set_priority_refuses_a_value_out_of_range(admin_page: Page) -> None:
    waiting = BatchTask.submit("examples.sleep", {"seconds": 1}, run_after=timedelta(hours=1))
    admin_page.goto(CHANGELIST)
    run_action(admin_page, "set_priority", waiting)

    field = admin_page.locator('input[name="priority"]')
    field.fill("500")
    admin_page.locator('input[name="apply"]').click()

    # The browser's own check (min/max on the field) keeps the form from being sent.
    assert field.evaluate("el => el.validity.rangeOverflow") is True
    expect(admin_page.locator("h1")).to_have_text("Set the priority of batch tasks")
    assert BatchTask.objects.get(pk=waiting.pk).priority == 0


@pytest.mark.worker
def test_the_progress_bar_advances_without_a_reload(admin_page: Page, start_worker: Any) -> None:
    start_worker("adm", ["batch.examples.progress"], concurrency=1)
    task = BatchTask.submit("examples.progress", {"steps": 16, "delay": 0.5})
    wait_for(lambda: state_of(task) == TaskState.RUNNING)
    admin_page.goto(CHANGELIST)
    admin_page.evaluate(MARK)
    cell = admin_page.locator(f'.batchtasks-progress[data-task-id="{task.pk}"]')
    first = int(cell.locator("progress").evaluate("bar => bar.value"))

    admin_page.wait_for_function(PROGRESS_ABOVE, arg=[task.pk, first], timeout=20_000)
    expect(cell.locator(".batchtasks-progress-text")).to_have_text(
        re.compile(r"^\d+% step \d+ of 16$")
    )
    expect(cell).to_have_attribute("data-final", "1", timeout=30_000)
    expect(cell.locator(".batchtasks-progress-text")).to_have_text("100% step 16 of 16")
    expect(admin_page.locator(f'.batchtasks-state[data-task-id="{task.pk}"]')).to_have_text(
        "Succeeded"
    )
    assert admin_page.evaluate(SAME_PAGE) is True
    assert admin_page.console_errors == []


@pytest.mark.worker
def test_staff_without_view_all_see_their_own_tasks_advance_quietly(
    page: Page, login: Any, make_user: Any, start_worker: Any
) -> None:
    start_worker("adm", ["batch.examples.progress"], concurrency=1)
    clerk = make_user("clerk", staff=True, perms=["batchtasks.view_batchtask"])
    theirs = BatchTask.submit("examples.sleep", {"seconds": 1}, owner=make_user("other"))
    mine = BatchTask.submit("examples.progress", {"steps": 12, "delay": 0.5}, owner=clerk)
    wait_for(lambda: state_of(mine) == TaskState.RUNNING)
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if "/api/tasks/" in r.url else None)
    login(page, clerk)
    page.goto(CHANGELIST)

    mine_cell = page.locator(f'.batchtasks-progress[data-task-id="{mine.pk}"]')
    expect(mine_cell).to_have_attribute("data-final", "1", timeout=30_000)
    expect(mine_cell.locator(".batchtasks-progress-text")).to_have_text("100% step 12 of 12")
    # Another owner's task (no worker takes it) is not the API's to show this user: it
    # is left as the page showed it, and nothing asked for every user's tasks.
    expect(page.locator(f'.batchtasks-state[data-task-id="{theirs.pk}"]')).to_have_text("Queued")
    assert polls and not any("all=1" in url for url in polls)
    assert page.console_errors == []
