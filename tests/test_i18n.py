"""The languages batchtasks speaks: with Accept-Language nb the indicator, the monitor, the
API's problems, the admin and the command line answer in Norwegian, while the API's machine
fields stay English; the catalogs of every language are complete and keep their placeholders.
"""

from __future__ import annotations

import ast
import json
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
from django.core.management import CommandError, call_command
from django.template import Context, Template
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import translation

from batchtasks import BatchTask
from batchtasks.core.exceptions import InvalidParameters, InvalidTaskOption

LOCALE = Path(__file__).resolve().parent.parent / "batchtasks" / "locale"
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


def catalog(lang: str, domain: str) -> list[dict[str, Any]]:
    return entries(LOCALE / lang / "LC_MESSAGES" / f"{domain}.po")


# --- the catalogs ---------------------------------------------------------------------------
@pytest.mark.parametrize("domain", ["django", "djangojs"])
@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_message_is_translated_and_none_is_fuzzy(lang: str, domain: str) -> None:
    listed = catalog(lang, domain)
    assert listed, f"{lang}/{domain}.po is empty"
    untranslated = [e["msgid"] for e in listed if not all(e["msgstr"])]
    fuzzy = [e["msgid"] for e in listed if "fuzzy" in e["flags"]]
    assert untranslated == [] and fuzzy == []


@pytest.mark.parametrize("domain", ["django", "djangojs"])
@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_translation_keeps_the_placeholders_of_its_message(lang: str, domain: str) -> None:
    wrong = []
    for e in catalog(lang, domain):
        # Every language here has English's two forms: the singular's translation holds
        # the singular's placeholders, the plural's the plural's.
        sources = [e["msgid"], e.get("msgid_plural", e["msgid"])]
        for source, text in zip(sources, e["msgstr"], strict=False):
            if sorted(PLACEHOLDER.findall(text)) != sorted(PLACEHOLDER.findall(source)):
                wrong.append((source, text))
    assert wrong == []


@pytest.mark.skipif(shutil.which("xgettext") is None, reason="GNU gettext is not installed")
def test_the_catalogs_hold_every_message_of_the_code_and_templates(tmp_path: Path) -> None:
    """What `make messages` would find now is what the catalogs hold: nothing new that
    lacks a translation, nothing stale."""
    copy = tmp_path / "batchtasks"
    shutil.copytree(LOCALE.parent, copy, ignore=shutil.ignore_patterns("__pycache__", "*.mo"))
    for domain in ("django", "djangojs"):
        subprocess.run(
            [sys.executable, str(LOCALE.parent.parent / "manage.py"), "makemessages",
             "-l", "nb", "-d", domain, "--no-obsolete", "--no-location"],
            cwd=copy, check=True, capture_output=True,
        )  # fmt: skip
        fresh = {e["msgid"] for e in entries(copy / "locale/nb/LC_MESSAGES" / f"{domain}.po")}
        held = {e["msgid"] for e in catalog("nb", domain)}
        assert fresh == held, f"{domain}: run `make messages` and translate the new messages"


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
