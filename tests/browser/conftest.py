"""Browser tests: the real pages on pytest-django's live server, in headless Chromium.

Fixtures (names fixed by the web contract): ``live_url``, ``page``, ``login``,
``make_user``; and ``live_media_root``, the workers' MEDIA_ROOT shared with the live
server. Every test in this folder is marked ``browser`` (``-m browser``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Playwright's sync API runs an asyncio loop in the test thread, and Django refuses ORM
# calls from a thread with a running loop unless told that this is safe here.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parent.parent.parent
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this folder ``browser``, so ``-m browser`` selects them."""
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item: the ``page`` fixture reads it at teardown."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module (Debian's, never a downloaded one). Not per
    session: Playwright's loop runs in the test thread while it is open, and the later
    tests that call async code through ``async_to_sync`` would find it there."""
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing: run .ci/browser (apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def live_url(live_server: Any) -> str:
    """The live server's root URL, without a trailing slash (the workers see its database)."""
    return str(live_server.url)


@pytest.fixture
def page(
    browser: Any, live_url: str, request: pytest.FixtureRequest, transactional_db: None
) -> Iterator[Any]:
    """A fresh context and page; ``page.dialogs``, ``page.console_errors`` and
    ``page.not_found`` (the URLs answered 404) record what the page showed and asked for
    (dialogs are dismissed); a failed test leaves a screenshot.

    It asks for the database itself so that it is closed before the database is emptied:
    a page still polling (the monitor, the indicator) would otherwise have the live
    server read tables while the flush truncates them, and the two deadlock.

    Parametrized indirectly, its parameter is the browser's locale (its Accept-Language)."""
    locale = getattr(request, "param", None)
    context = browser.new_context(base_url=live_url, **({"locale": locale} if locale else {}))
    context.set_default_timeout(15_000)
    new_page = context.new_page()
    new_page.dialogs = []
    new_page.console_errors = []
    new_page.not_found = []

    def on_dialog(dialog: Any) -> None:
        new_page.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def on_console(message: Any) -> None:
        if message.type == "error":
            new_page.console_errors.append(message.text)

    new_page.on("dialog", on_dialog)
    new_page.on("console", on_console)
    new_page.on("pageerror", lambda error: new_page.console_errors.append(str(error)))
    new_page.on(
        "response",
        lambda response: response.status == 404 and new_page.not_found.append(response.url),
    )
    yield new_page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        _screenshot(new_page, request.node, report)
    new_page.goto("about:blank")  # no more polls from this page
    context.close()


def _screenshot(page: Any, item: pytest.Item, report: pytest.TestReport) -> None:
    """Save what the page showed when the test failed and say where it is."""
    folder = Path(os.environ.get("BATCHTASKS_SCREENSHOT_DIR", ROOT / ".run" / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (re.sub(r"[^\w.-]+", "_", item.nodeid) + ".png")
    try:
        page.screenshot(path=str(path), full_page=True)
    except Exception as error:  # a crashed page must not hide the test's own failure
        message = f"no screenshot ({error})"
    else:
        message = f"screenshot saved to {path}"
    # The failure summary is printed at the end of the run, from this same report.
    report.sections.append(("Browser", message))
    print(message)


@pytest.fixture
def login(live_url: str) -> Callable[[Any, Any], None]:
    """``login(page, user)``: sign ``user`` in through a real session on the live server."""
    from django.conf import settings
    from django.test import Client

    def sign_in(page: Any, user: Any) -> None:
        client = Client()
        client.force_login(user)
        cookie = client.cookies[settings.SESSION_COOKIE_NAME]
        page.context.add_cookies(
            [{"name": settings.SESSION_COOKIE_NAME, "value": cookie.value, "url": live_url}]
        )

    return sign_in


@pytest.fixture
def make_user(transactional_db: None) -> Callable[..., Any]:
    """``make_user(username, *, staff=False, superuser=False, perms=())``: a saved user
    with password ``pw-<username>-1`` and the permissions named ``app_label.codename``."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    def make(
        username: str, *, staff: bool = False, superuser: bool = False, perms: Iterable[str] = ()
    ) -> Any:
        model = get_user_model()
        user = model.objects.create_user(
            username, email=f"{username}@example.com", password=f"pw-{username}-1"
        )
        user.is_staff, user.is_superuser = staff or superuser, superuser
        user.save(update_fields=["is_staff", "is_superuser"])
        for name in perms:
            app_label, codename = name.split(".", 1)
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )
        return model.objects.get(pk=user.pk)  # without the cached permissions

    return make


@pytest.fixture
def live_media_root(settings: Any, media_root: Path) -> Path:
    """The workers' MEDIA_ROOT (``start_worker`` passes it), made the live server's too."""
    settings.MEDIA_ROOT = str(media_root)
    return media_root
