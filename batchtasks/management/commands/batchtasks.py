"""``manage.py batchtasks ACTION``: thin entry points to the app (``management.cli``)."""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import translation

from batchtasks.management.cli import add_all


class Command(BaseCommand):
    help = "Operate batch tasks; `manage.py batchtasks ACTION --help` describes each action."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="ACTION")
        sub.required = True
        add_all(sub)

    def handle(self, *args: Any, handler: Any, action: str, **options: Any) -> None:
        language = terminal_language()
        with translation.override(language) if language else nullcontext():
            handler(self, **options)


def terminal_language() -> str | None:
    """The language of the environment (``LC_ALL``, ``LC_MESSAGES``, ``LANG``, as gettext
    reads them: ``nb_NO.UTF-8`` → ``nb``) when it is one of ``LANGUAGES``; else ``None``,
    Django's ``LANGUAGE_CODE``."""
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(name, "").split(".")[0].split("@")[0]
        if value:
            try:
                return translation.get_supported_language_variant(value.replace("_", "-"))
            except LookupError:
                return None
    return None
