"""Schedules from the command line: list them with their next and last run and the task
the last run made; ``--run-due`` claims the due ticks once (for setups where no worker
runs the schedules, e.g. from the system's cron)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from rich.table import Table
from rich.text import Text

from batchtasks.services import schedules
from batchtasks.services.schedule_rows import schedule_lines, sync_schedules

from .terminal import cells, console_for, local_time


def add(sub: Any) -> None:
    p = sub.add_parser(
        "schedules",
        help=gettext_lazy("List schedules with their next and last run and the task each made."),
    )
    p.add_argument(
        "--run-due",
        action="store_true",
        help=gettext_lazy("First claim and submit the due ticks (once)."),
    )
    p.set_defaults(handler=list_schedules)


def list_schedules(command: BaseCommand, *, run_due: bool = False, **options: Any) -> None:
    console = console_for(command)
    if run_due:
        sync_schedules()
        done = schedules.run_due()
        console.print(
            _(
                "Submitted: %(submitted)s; ticks skipped (overlap): %(skipped)s; failed: "
                "%(failed)s; missed ticks not run: %(dropped)s."
            )
            % {
                "submitted": len(done.submitted),
                "skipped": done.skipped,
                "failed": done.failed,
                "dropped": done.dropped,
            }
        )
    table = Table(
        _("Name"), _("Type"), _("When"), _("Enabled"), _("From"), _("Next run"), _("Last run"),
        _("Last task"),
    )  # fmt: skip
    for line in schedule_lines():
        last = "-" if line.last_task_id is None else f"{line.last_task_id} {line.last_task_state}"
        table.add_row(
            *cells(
                line.name, line.type_name, line.timing, _("yes") if line.enabled else _("no"),
                line.source, local_time(line.next_run_at), local_time(line.last_run_at), last,
            )
        )  # fmt: skip
    console.print(table if table.row_count else Text(_("No schedules.")))
