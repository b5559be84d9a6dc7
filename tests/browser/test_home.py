"""The reference project's home page: sign-in through the admin, an export run in the
background, and its file handed out to its owner only."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from playwright.sync_api import Page, expect

from project.views import report_path
from tests.browser.test_indicator import INDICATOR, RECORD_EVENTS


def test_the_home_page_sends_anonymous_visitors_to_sign_in(page: Page) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/$"))
    expect(page.locator("#batchtasks-indicator")).to_have_count(0)


def test_a_user_who_is_not_staff_signs_in_and_sees_the_home_page(
    page: Page, make_user: Any
) -> None:
    make_user("dora")
    page.goto("/")
    page.fill("input[name=username]", "dora")
    page.fill("input[name=password]", "pw-dora-1")
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/$"))
    # Exporting every user's name and email needs auth.view_user, which dora lacks.
    expect(page.locator("#export")).to_have_count(0)
    expect(page.locator("#export-unavailable")).to_contain_text("auth.view_user")
    expect(page.locator("#batchtasks-indicator")).to_have_count(1)
    page.click("text=Log out")
    expect(page).to_have_url(re.compile(r"/accounts/login/$"))


def test_the_admin_still_answers_at_admin(page: Page, login: Any, make_user: Any) -> None:
    login(page, make_user("root", superuser=True))
    page.goto("/admin/")
    expect(page.locator("#site-name")).to_be_visible()
    expect(page.locator("#content h1")).to_have_text("Site administration")


@pytest.mark.worker
def test_the_export_button_ends_with_a_download_that_only_its_owner_gets(
    page: Page, login: Any, make_user: Any, live_media_root: Path, start_worker: Any
) -> None:
    bob = make_user("bob", perms=["auth.view_user"])
    make_user("carol")
    mallory = make_user("mallory", perms=["auth.view_user"])  # may export, not bob's file
    start_worker("w", ["batch.reports"], concurrency=1)
    login(page, bob)
    page.add_init_script(RECORD_EVENTS)
    page.goto("/")

    page.get_by_role("button", name="Export users as CSV").click()
    download_link = page.locator("#download")
    expect(download_link).to_be_visible(timeout=60_000)
    expect(page.locator("#export-status")).to_contain_text("3 users")
    expect(page.locator(INDICATOR)).to_contain_text("Export users as CSV")
    with page.expect_download() as download:
        download_link.click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert {row["username"] for row in rows} == {"bob", "carol", "mallory"}

    # The indicator's own link to the result (the plugin's "url") is the same file.
    result_link = page.locator(f"{INDICATOR} .batchtasks-indicator__link")
    assert "mallory" in page.request.get(result_link.get_attribute("href") or "").text()

    href = download_link.get_attribute("href") or ""
    other = Client()
    other.force_login(mallory)
    assert other.get(href).status_code == 404


def test_a_report_path_that_leaves_media_root_is_never_served(
    settings: Any, media_root: Path
) -> None:
    settings.MEDIA_ROOT = str(media_root)
    (media_root / "report.csv").write_text("id\n")
    (media_root.parent / "secret.txt").write_text("secret\n")

    assert report_path({"path": "report.csv"}) == (media_root / "report.csv").resolve()
    assert report_path({"path": "../secret.txt"}) is None
    assert report_path({"path": str(media_root.parent / "secret.txt")}) is None
    assert report_path({"path": "missing.csv"}) is None
