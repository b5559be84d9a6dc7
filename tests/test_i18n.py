"""The languages batchtasks speaks: with Accept-Language nb the indicator, the monitor, the
API's problems, the admin, the reference project's pages and the command line (its --help
too) answer in Norwegian, while the API's machine fields stay English; the catalogs of every
language, the app's and the reference project's, are complete and keep their placeholders.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.template import Context, Template
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import formats, timezone, translation

from batchtasks import BatchTask
from batchtasks.core.exceptions import InvalidParameters, InvalidTaskOption
from batchtasks.management.commands.batchtasks import Command

ROOT = Path(__file__).resolve().parent.parent
LOCALE = ROOT / "batchtasks" / "locale"
#: The reference project's own catalogs (its pages), in LOCALE_PATHS.
PROJECT_LOCALE = ROOT / "project" / "locale"
#: Every catalog, as (its locale folder, domain).
CATALOGS = {
    "batchtasks/django": (LOCALE, "django"),
    "batchtasks/djangojs": (LOCALE, "djangojs"),
    "project/django": (PROJECT_LOCALE, "django"),
}
LANGUAGES = ["nb", "nl", "de"]
NB = {"HTTP_ACCEPT_LANGUAGE": "nb-NO,nb;q=0.9,en;q=0.5"}
PLACEHOLDER = re.compile(r"%\((\w+)\)[-#0 +]*\d*(?:\.\d+)?[sdifr]|%[sd]")


@pytest.fixture(autouse=True)
def _back_to_english() -> Any:
    """A request in Norwegian leaves its language active in this thread (LocaleMiddleware
    activates, nothing deactivates): the tests after these would speak Norwegian."""
    yield
    translation.activate(settings.LANGUAGE_CODE)


# --- a small reader of .po files ----------------------------------------------------------
def entries(path: Path) -> list[dict[str, Any]]:
    """The entries of a .po file: ``msgid``, ``msgid_plural``, ``msgstr`` (a list) and
    ``flags``; the header (empty msgid) left out."""
    found = []
    for block in path.read_text(encoding="utf-8").strip().split("\n\n"):
        entry: dict[str, Any] = {"flags": set()}
        key = ""
        for line in block.splitlines():
            if line.startswith("#,"):
                entry["flags"] |= {f.strip() for f in line[2:].split(",")}
            elif line.startswith("#"):
                continue
            elif line.startswith('"'):
                entry[key] = entry.get(key, "") + ast.literal_eval(line)
            else:
                key, _, text = line.partition(" ")
                entry[key] = ast.literal_eval(text)
        entry["msgstr"] = [v for k, v in sorted(entry.items()) if k.startswith("msgstr")]
        if entry.get("msgid"):
            found.append(entry)
    return found


def catalog(lang: str, domain: str, locale: Path = LOCALE) -> list[dict[str, Any]]:
    return entries(locale / lang / "LC_MESSAGES" / f"{domain}.po")


# --- the catalogs ---------------------------------------------------------------------------
@pytest.mark.parametrize("which", CATALOGS)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_message_is_translated_and_none_is_fuzzy(lang: str, which: str) -> None:
    locale, domain = CATALOGS[which]
    listed = catalog(lang, domain, locale)
    assert listed, f"{lang}/{which}.po is empty"
    untranslated = [e["msgid"] for e in listed if not all(e["msgstr"])]
    fuzzy = [e["msgid"] for e in listed if "fuzzy" in e["flags"]]
    assert untranslated == [] and fuzzy == []


@pytest.mark.parametrize("which", CATALOGS)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_translation_keeps_the_placeholders_of_its_message(lang: str, which: str) -> None:
    locale, domain = CATALOGS[which]
    wrong = []
    for e in catalog(lang, domain, locale):
        # Every language here has English's two forms: the singular's translation holds
        # the singular's placeholders, the plural's the plural's.
        sources = [e["msgid"], e.get("msgid_plural", e["msgid"])]
        for source, text in zip(sources, e["msgstr"], strict=False):
            if sorted(PLACEHOLDER.findall(text)) != sorted(PLACEHOLDER.findall(source)):
                wrong.append((source, text))
    assert wrong == []


@pytest.mark.skipif(shutil.which("xgettext") is None, reason="GNU gettext is not installed")
@pytest.mark.parametrize("which", CATALOGS)
def test_the_catalogs_hold_every_message_of_the_code_and_templates(
    tmp_path: Path, which: str
) -> None:
    """What `make messages` would find now is what the catalogs hold: nothing new that
    lacks a translation, nothing stale."""
    locale, domain = CATALOGS[which]
    copy = tmp_path / locale.parent.name
    shutil.copytree(locale.parent, copy, ignore=shutil.ignore_patterns("__pycache__", "*.mo"))
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "makemessages",
         "-l", "nb", "-d", domain, "--no-obsolete", "--no-location"],
        cwd=copy, check=True, capture_output=True,
    )  # fmt: skip
    fresh = {e["msgid"] for e in entries(copy / "locale/nb/LC_MESSAGES" / f"{domain}.po")}
    held = {e["msgid"] for e in catalog("nb", domain, locale)}
    assert fresh == held, f"{which}: run `make messages` and translate the new messages"


# --- the web in Norwegian -------------------------------------------------------------------
@pytest.fixture
def alice(db: None) -> Any:
    return get_user_model().objects.create_user("alice", password="pw")


def test_the_indicators_poll_names_states_in_norwegian_with_machine_fields_in_english(
    client: Client, alice: Any
) -> None:
    BatchTask.submit("examples.progress", {}, owner=alice, run_after=timedelta(hours=1))
    client.force_login(alice)
    english = json.loads(client.get(reverse("batchtasks:api-active")).content)
    answer = client.get(reverse("batchtasks:api-active"), **NB)
    (task,) = json.loads(answer.content)["tasks"]
    assert task["state_label"] == "Ny" and english["tasks"][0]["state_label"] == "New"
    assert task["state"] == "new" and task["type"] == "examples.progress"
    assert set(task) == set(english["tasks"][0])  # the same field names
    assert answer.headers["Content-Language"] == "nb"
    assert "Accept-Language" in answer.headers["Vary"]


def test_the_indicators_words_come_in_the_requests_language(client: Client) -> None:
    script = client.get(reverse("batchtasks:jsi18n"), **NB).content.decode()
    assert "%(count)s oppgaver" in script and "Resultat" in script
    request = RequestFactory().get("/")
    request.user = get_user_model()(username="alice", pk=1)
    with translation.override("nb"):
        html = Template("{% load batchtasks %}{% batchtasks_indicator %}").render(
            Context({"request": request})
        )
    assert 'lang="nb"' in html and ">Bakgrunnsoppgavene dine:</span>" in html
    assert reverse("batchtasks:jsi18n") in html


def test_an_api_problem_has_a_norwegian_title_and_detail_but_english_machine_fields(
    client: Client, alice: Any
) -> None:
    client.force_login(alice)
    missing = client.get(reverse("batchtasks:api-task", args=[999_999]), **NB)
    body = json.loads(missing.content)
    assert missing.status_code == 404
    assert body["type"] == "urn:batchtasks:problem:not-found" and body["status"] == 404
    assert body["title"] == "Ikke funnet"
    assert body["detail"] == "Det finnes ingen slik oppgave som du kan se."

    bad = client.post(
        reverse("batchtasks:api-tasks"),
        {"type": "examples.progress", "priority": "high"},
        content_type="application/json",
        **NB,
    )
    body = json.loads(bad.content)
    assert body["type"] == "urn:batchtasks:problem:invalid-request"
    assert body["title"] == "Ugyldig forespørsel"
    assert body["errors"] == [{"field": "priority", "message": "priority må være et heltall."}]


def test_the_monitor_speaks_norwegian(admin_client: Client) -> None:
    html = admin_client.get(reverse("batchtasks:monitor"), **NB).content.decode()
    assert '<html lang="nb"' in html
    for text in ("Overvåking av batchoppgaver", "Kjørende oppgaver", "Nylige feil", "Køer"):
        assert text in html
    assert "Running tasks" not in html


def test_the_admin_lists_tasks_in_norwegian(admin_client: Client, alice: Any) -> None:
    BatchTask.submit("examples.progress", {}, owner=alice, run_after=timedelta(hours=1))
    html = admin_client.get(reverse("admin:batchtasks_batchtask_changelist"), **NB).content
    page = html.decode()
    assert "Avbryt valgte oppgaver" in page  # an action
    assert "Batchoppgaver" in page  # the app and the model
    assert ">Ny<" in page or "Ny</span>" in page  # the task's state


def test_the_admin_writes_dates_the_languages_way(admin_client: Client, alice: Any) -> None:
    task = BatchTask.submit("examples.progress", {}, owner=alice)
    change = reverse("admin:batchtasks_batchtask_change", args=[task.pk])
    created = timezone.localtime(task.created_at)

    for lang in ("nb", "en"):
        page = admin_client.get(change, HTTP_ACCEPT_LANGUAGE=lang).content.decode()
        with translation.override(lang):
            written = formats.date_format(created, "DATETIME_FORMAT")
        assert written in page, (lang, written)
    with translation.override("nb"):
        assert "desember" in formats.date_format(created.replace(month=12), "DATETIME_FORMAT")


# --- the command line -----------------------------------------------------------------------
def test_the_command_line_follows_the_environments_language(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = StringIO()
    monkeypatch.setenv("LANG", "nb_NO.UTF-8")
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    call_command("batchtasks", "list", stdout=out)
    assert "Ingen oppgaver passer." in out.getvalue()
    with pytest.raises(CommandError) as unknown:
        call_command("batchtasks", "list", "--type", "examples.progres", stdout=out)
    said = str(unknown.value)
    assert said.startswith("Ukjent oppgavetype 'examples.progres'. Mente du 'examples.progress'")
    assert " eller " in said and said.endswith("? `manage.py batchtasks workers` viser typene.")

    monkeypatch.setenv("LANG", "C.UTF-8")
    out = StringIO()
    call_command("batchtasks", "list", stdout=out)
    assert "No tasks match." in out.getvalue()


def help_text(*args: str) -> str:
    """What ``manage.py batchtasks ARGS --help`` prints in a Norwegian terminal."""
    env = {k: v for k, v in os.environ.items() if k not in ("LC_ALL", "LC_MESSAGES")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "batchtasks", *args, "--help"],
        env={**env, "LANG": "nb_NO.UTF-8"}, cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return " ".join(done.stdout.split())  # argparse wraps lines to the terminal's width


def test_the_command_lines_help_is_in_the_terminals_language() -> None:
    top = help_text()
    assert top.startswith("bruk: manage.py batchtasks")
    assert "Håndter batchoppgaver; `manage.py batchtasks ACTION --help` beskriver" in top
    assert "Kjør feilede eller avbrutte oppgaver på nytt." in top  # retry
    assert "Vis denne hjelpeteksten og avslutt." in top and " valg: -h, --help " in top
    assert "Run failed" not in top and "Verbosity level" not in top
    listing = help_text("list")
    assert "Bare oppgaver av denne typen." in listing
    assert "Bare oppgaver med denne tilstanden (gjenta for flere): new, queued," in listing
    english = Command().create_parser("manage.py", "batchtasks").format_help()
    assert "Run failed or cancelled tasks again." in english and "usage: " in english


def test_the_reference_project_offers_the_four_languages() -> None:
    assert [code for code, _ in settings.LANGUAGES] == ["en", "nb", "nl", "de"]
    assert "django.middleware.locale.LocaleMiddleware" in settings.MIDDLEWARE


def test_the_errors_of_a_submit_are_in_the_active_language(db: None) -> None:
    with translation.override("de"), pytest.raises(InvalidTaskOption) as refused:
        BatchTask.submit("examples.progress", {}, priority=500)
    assert "liegt außerhalb des Bereichs" in str(refused.value)
    with pytest.raises(InvalidParameters) as bad:
        BatchTask.submit("examples.progress", {"steps": "many", "colour": 1})
    assert "unknown parameter" in str(bad.value)  # English outside a translation


# --- the reference project's pages ----------------------------------------------------------
def test_the_sign_in_page_speaks_norwegian(client: Client, alice: Any) -> None:
    page = client.get(reverse("login"), **NB).content.decode()
    assert '<html lang="nb">' in page
    for text in ("<title>Logg inn · batchtasks</title>", ">Brukernavn</label>", ">Passord</label>"):
        assert text in page
    assert "Sign in" not in page and "Username" not in page
    wrong = client.post(reverse("login"), {"username": "alice", "password": "no"}, **NB)
    assert "Brukernavnet og passordet ditt stemte ikke. Prøv igjen." in wrong.content.decode()


def test_the_home_page_speaks_norwegian(client: Client, alice: Any) -> None:
    client.force_login(alice)
    page = client.get(reverse("home"), **NB).content.decode()
    assert '<html lang="nb">' in page
    for text in (">API-tokener</a>", ">Logg ut</button>", "<h2>Brukere</h2>"):
        assert text in page
    assert "krever tillatelsen til å se brukere (<code>auth.view_user</code>)" in page

    alice.user_permissions.add(Permission.objects.get_by_natural_key("view_user", "auth", "user"))
    client.force_login(get_user_model().objects.get(pk=alice.pk))
    page = client.get(reverse("home"), **NB).content.decode()
    assert ">Eksporter brukere som CSV</button>" in page
    assert "Eksporten kjører i bakgrunnen" in page and ">Last ned CSV-filen</a>" in page
    texts = json.loads(page.split('id="export-texts" type="application/json">')[1].split("<")[0])
    assert texts["submitting"] == "Sender inn eksporten …"
    assert texts["ready_other"] == "Eksport #%(id)s er klar: %(rows)s brukere."
    assert "The export runs" not in page and "Log out" not in page
