"""Print, as JSON, the reference the docs take from the running code: the help of
``manage.py batchtasks`` and of each of its actions, and the app's OpenAPI document.

Run by ``docs/hooks.py`` in a process of its own (it sets Django up with the reference
project's settings; nothing is read from or written to a database).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _helps(parser: argparse.ArgumentParser, prog: str) -> dict[str, str]:
    """The help of ``parser`` and of every subcommand below it, by command line."""
    parser.prog = prog
    out = {prog: parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(_helps(sub, f"{prog} {name}"))
    return out


def main() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    import django

    django.setup()
    from batchtasks.management.commands.batchtasks import Command
    from batchtasks.web.openapi import document

    parser = Command().create_parser("manage.py", "batchtasks")
    json.dump({"cli": _helps(parser, "manage.py batchtasks"), "openapi": document()}, sys.stdout)


if __name__ == "__main__":
    main()
