"""Schedules from the command line: list them with their next and last run and the task
the last run made; ``--run-due`` claims the due ticks once (for setups where no worker
runs the schedules, e.g. from the system's cron)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from rich.table import Table
from rich.text import Text

from batchtasks.services import schedules
from batchtasks.services.schedule_rows import schedule_lines, sync_schedules

from .terminal import cells, console_for, local_time


def add(sub: Any) -> None:
    p = sub.add_parser(
        "schedules", help="List schedules with their next and last run and the task each made."
    )
    p.add_argument(
        "--run-due", action="store_true", help="First claim and submit the due ticks (once)."
    )
    p.set_defaults(handler=list_schedules)


def list_schedules(command: BaseCommand, *, run_due: bool = False, **options: Any) -> None:
    console = console_for(command)
    if run_due:
        sync_schedules()
        done = schedules.run_due()
        console.print(
            f"Submitted {len(done.submitted)} task(s); {done.skipped} tick(s) skipped "
            f"(overlap), {done.failed} failed, {done.dropped} missed tick(s) not run."
        )
    table = Table("Name", "Type", "When", "Enabled", "From", "Next run", "Last run", "Last task")
    for line in schedule_lines():
        last = "-" if line.last_task_id is None else f"{line.last_task_id} {line.last_task_state}"
        table.add_row(
            *cells(
                line.name, line.type_name, line.timing, "yes" if line.enabled else "no",
                line.source, local_time(line.next_run_at), local_time(line.last_run_at), last,
            )
        )  # fmt: skip
    console.print(table if table.row_count else Text("No schedules."))
