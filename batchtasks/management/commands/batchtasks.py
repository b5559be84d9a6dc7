"""``manage.py batchtasks ACTION``: thin entry points to the app (``management.cli``)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from batchtasks.management.cli import add_all


class Command(BaseCommand):
    help = "Operate batch tasks; `manage.py batchtasks ACTION --help` describes each action."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="ACTION")
        sub.required = True
        add_all(sub)

    def handle(self, *args: Any, handler: Any, action: str, **options: Any) -> None:
        handler(self, **options)
