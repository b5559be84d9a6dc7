"""What the task commands print: a ``rich`` console on the command's stdout, a task's
live progress, and values as text."""

from __future__ import annotations

import json
import time
from typing import IO, Any, cast

from django.core.management.base import BaseCommand, OutputWrapper
from django.utils import timezone
from django.utils.translation import gettext as _
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from batchtasks.core.states import FINAL_STATES, TaskState
from batchtasks.models import BatchTask
from batchtasks.services import monitor

#: How often ``submit --wait`` reads the task's row, in seconds.
POLL_SECONDS = 0.25


def watch(console: Console, command: BaseCommand, task: BatchTask) -> None:
    """Show the task's progress until it is final: a live bar on a terminal, else a
    line whenever the state, percent or message changes."""
    if console.is_interactive:
        watch_with_bar(console, task)
        return
    shown: tuple[str, int, str] | None = None
    while True:
        seen = (task.state, task.progress_percent, task.progress_message)
        if seen != shown:
            line = _("Task %(id)s: %(state)s %(percent)s%% %(message)s") % {
                "id": task.pk,
                "state": seen[0],
                "percent": seen[1],
                "message": seen[2],
            }
            command.stdout.write(line.rstrip())
            command.stdout.flush()
            shown = seen
        if task.state in FINAL_STATES:
            return
        time.sleep(POLL_SECONDS)
        reload(task)


def watch_with_bar(console: Console, task: BatchTask) -> None:
    """A live bar: percent, state, time elapsed and the progress message."""
    columns = (
        TextColumn(_("Task %(id)s") % {"id": task.pk}, markup=False),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[state]}", markup=False),
        TimeElapsedColumn(),
        TextColumn("{task.fields[message]}", markup=False),
    )
    with Progress(*columns, console=console) as bar:
        row = bar.add_task("", total=100, state=task.state, message="")
        while True:
            done = task.state in FINAL_STATES
            percent = 100 if task.state == TaskState.SUCCEEDED else task.progress_percent
            bar.update(row, completed=percent, state=task.state, message=task.progress_message)
            if done:
                return
            time.sleep(POLL_SECONDS)
            reload(task)


def reload(task: BatchTask) -> None:
    task.refresh_from_db(
        fields=["state", "progress_percent", "progress_message", "attempt", "result",
                "error_type", "error_message", "started_at", "finished_at"]
    )  # fmt: skip


def console_for(command: BaseCommand) -> Console:
    """A rich console writing to the command's stdout; wide when not a terminal, so a
    table piped to a file or grep keeps each row on one line."""
    # rich only writes, flushes and asks isatty(): enough of a file for it.
    stream = cast("IO[str]", CommandStream(command.stdout))
    console = Console(file=stream, highlight=False)
    if not console.is_terminal:
        console.width = 200
    return console


class CommandStream:
    """The command's stdout as a plain file for rich (``OutputWrapper.write`` would end
    every chunk rich writes with a newline)."""

    def __init__(self, out: OutputWrapper) -> None:
        self.out = out

    def write(self, text: str) -> int:
        self.out.write(text, ending="")
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def isatty(self) -> bool:
        return self.out.isatty()


def cells(*values: Any) -> list[Text]:
    """Table cells as plain text: a ``[`` in a description is not rich markup."""
    return [Text(str(v)) for v in values]


def one_line(value: object) -> str:
    """A message on one line, for ``CommandError``."""
    return " ".join(str(value).split())


def pretty(value: Any) -> str:
    return "-" if value is None else json.dumps(value, indent=2, ensure_ascii=False)


def local_time(when: Any) -> str:
    return "-" if when is None else timezone.localtime(when).strftime("%Y-%m-%d %H:%M:%S")


def seconds_between(start: Any, end: Any) -> float | None:
    return None if start is None or end is None else max(0.0, (end - start).total_seconds())


def ago(now: Any, then: Any) -> str:
    return monitor.duration_text(seconds_between(then, now))
