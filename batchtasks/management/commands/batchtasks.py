"""``manage.py batchtasks ACTION``: thin entry points to the app (``management.cli``)."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import translation
from django.utils.translation import gettext as _

from batchtasks.management.cli import add_all, translate_parser


class Command(BaseCommand):
    @property
    def help(self) -> str:  # type: ignore[override]
        # A property: argparse wraps the description as a string, in the language active
        # when the parser is made.
        return _("Operate batch tasks; `manage.py batchtasks ACTION --help` describes each action.")

    def run_from_argv(self, argv: list[str]) -> None:
        # --help prints (and exits) while the arguments are parsed, before handle().
        with in_terminal_language():
            super().run_from_argv(argv)

    def print_help(self, prog_name: str, subcommand: str) -> None:
        # `manage.py help batchtasks`
        with in_terminal_language():
            super().print_help(prog_name, subcommand)

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        return translate_parser(super().create_parser(prog_name, subcommand, **kwargs))

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="ACTION")
        sub.required = True
        add_all(sub)

    def handle(self, *args: Any, handler: Any, action: str, **options: Any) -> None:
        with in_terminal_language():
            handler(self, **options)


def in_terminal_language() -> AbstractContextManager[Any]:
    """The environment's language active inside (``terminal_language``), when it has one."""
    language = terminal_language()
    return translation.override(language) if language else nullcontext()


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
