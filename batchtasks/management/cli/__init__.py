"""The subcommands of ``manage.py batchtasks``, one module per group.

Each module has ``add(sub)``, which adds its subcommands to the argparse subparsers and
sets ``handler`` on each: a function ``handler(command, **options)`` that writes to
``command.stdout`` and raises ``CommandError`` for bad input (one line, non-zero exit).
Help texts are lazy translations: argparse formats them when ``--help`` asks, in the
language then active.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any, TypeVar

from django.utils.translation import gettext_lazy as _

#: The modules of this package that add subcommands, in ``--help`` order.
MODULES = ("engine", "tasks", "schedules", "tokens", "deploy")

#: argparse's own headings (untranslated in the standard library), by their English text.
TITLES = {"positional arguments": _("positional arguments"), "options": _("options")}
#: The help of the options argparse and every Django command add, by option.
COMMON_HELP = {
    "-h": _("Show this help message and exit."),
    "--version": _("Show the program's version number and exit."),
    "-v": _("Verbosity level: 0 minimal, 1 normal, 2 verbose, 3 very verbose output."),
    "--settings": _(
        "The Python path of a settings module, e.g. project.settings; default: the "
        "DJANGO_SETTINGS_MODULE environment variable."
    ),
    "--pythonpath": _("A directory to add to the Python path."),
    "--traceback": _("Raise on CommandError exceptions (show the traceback)."),
    "--no-color": _("Do not colour the output."),
    "--force-color": _("Colour the output even when it is not a terminal."),
    "--skip-checks": _("Skip the system checks."),
}


def add_all(sub: Any) -> None:
    """Add every module's subcommands to ``sub``."""
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}").add(sub)


Parser = TypeVar("Parser", bound=argparse.ArgumentParser)


def translate_parser(parser: Parser) -> Parser:
    """``parser`` and its subparsers with argparse's and Django's own texts translated."""
    parser.formatter_class = _translated(parser.formatter_class)
    for group in parser._action_groups:
        group.title = TITLES.get(group.title or "", group.title)  # type: ignore[assignment]
    for action in parser._actions:
        for option in action.option_strings:
            action.help = COMMON_HELP.get(option, action.help)  # type: ignore[assignment]
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                translate_parser(child)
    return parser


def _translated(formatter: Any) -> Any:
    """``formatter`` (an argparse formatter class) with a translated ``usage:``."""

    class Translated(formatter):
        def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: Any = None) -> None:
            super().add_usage(
                usage, actions, groups, str(_("usage: ")) if prefix is None else prefix
            )

    return Translated
