"""The indicator and the monitor in a browser that asks for Norwegian (Accept-Language nb):
their words, from the templates and from the indicator's script, are Norwegian."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.test_indicator import INDICATOR, LABEL, submit, task_row

NORWEGIAN = pytest.mark.parametrize("page", ["nb-NO"], indirect=True)


@NORWEGIAN
def test_the_indicator_speaks_norwegian(
    page: Page, login: Any, make_user: Any, live_media_root: Path
) -> None:
    login(page, make_user("kari"))
    page.goto("/")
    expect(page.locator(INDICATOR)).to_have_attribute("data-polled", "true")
    first = submit(page, "examples.progress", params={"steps": 1}, run_after=3600)
    submit(page, "examples.progress", params={"steps": 1}, run_after=3600)

    expect(page.locator(LABEL)).to_have_text("2 oppgaver")
    expect(task_row(page, first).locator(".batchtasks-indicator__state")).to_have_text("Ny")
    expect(task_row(page, first).locator(".batchtasks-indicator__percent")).to_have_text("0\u00a0%")
    button = page.locator(f"{INDICATOR} .batchtasks-indicator__button")
    expect(button).to_contain_text("Bakgrunnsoppgavene dine:")
    assert page.console_errors == []


@NORWEGIAN
def test_the_monitor_speaks_norwegian(page: Page, login: Any, make_user: Any) -> None:
    login(page, make_user("ola", staff=True, perms=["batchtasks.view_batchtask"]))
    page.goto("/batchtasks/monitor/")
    expect(page.locator("#content h1")).to_have_text("Overvåking av batchoppgaver")
    expect(page.locator("#batchtasks-running h2")).to_have_text("Kjørende oppgaver")
    expect(page.locator(".batchtasks-live-text")).to_have_text(
        "Direkte: oppdateres med noen sekunders mellomrom."
    )
    assert page.console_errors == []
