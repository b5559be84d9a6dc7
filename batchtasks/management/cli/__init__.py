"""The subcommands of ``manage.py batchtasks``, one module per group.

Each module has ``add(sub)``, which adds its subcommands to the argparse subparsers and
sets ``handler`` on each: a function ``handler(command, **options)`` that writes to
``command.stdout`` and raises ``CommandError`` for bad input (one line, non-zero exit).
"""

from __future__ import annotations

import importlib
from typing import Any

#: The modules of this package that add subcommands, in ``--help`` order.
MODULES = ("engine", "tasks", "schedules", "tokens", "deploy")


def add_all(sub: Any) -> None:
    """Add every module's subcommands to ``sub``."""
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}").add(sub)
