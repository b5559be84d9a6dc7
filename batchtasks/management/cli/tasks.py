"""Tasks from the command line: submit (and watch), list, show, cancel, retry, stats.

Every change goes through the public API (``BatchTask.submit``, ``cancel``, ``retry``);
the figures of ``stats`` are the staff monitor's (``services.monitor``). Output goes
through ``rich``: a live bar and coloured tables on a terminal, plain lines otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import router
from django.utils.text import format_lazy
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from rich.table import Table
from rich.text import Text

from batchtasks.core.exceptions import (
    InvalidParameters,
    InvalidTaskOption,
    TaskTypeDisabled,
    UniqueKeyConflict,
    UnknownTaskType,
)
from batchtasks.core.registry import registry
from batchtasks.core.states import FINAL_STATES, TaskState
from batchtasks.models import BatchTask, BatchTaskDefinition, WorkerState
from batchtasks.services import monitor

from .terminal import ago, cells, console_for, local_time, one_line, pretty, seconds_between, watch

#: Rows ``list`` shows unless told otherwise.
DEFAULT_LIMIT = 20
#: The largest id PostgreSQL's bigint holds; a larger number cannot be a task.
MAX_ID = 2**63 - 1
#: Characters of a result shown after ``submit --wait``.
RESULT_CHARS = 200
SUBMIT_ERRORS = (InvalidParameters, InvalidTaskOption, TaskTypeDisabled)


def add(sub: Any) -> None:
    p = sub.add_parser(
        "submit", help=gettext_lazy("Submit a task; --wait shows its progress until it ends.")
    )
    p.add_argument(
        "type_name", metavar="TYPE", help=gettext_lazy("The task type, e.g. examples.progress.")
    )
    p.add_argument(
        "--params", metavar="JSON|@FILE", help=gettext_lazy("A JSON object, or @file holding one.")
    )
    p.add_argument("--priority", metavar="N", help=gettext_lazy("-100 to 100, higher first."))
    p.add_argument("--description", default="", help=gettext_lazy("Shown in lists and the admin."))
    p.add_argument(
        "--wait", action="store_true", help=gettext_lazy("Show progress until the task ends.")
    )
    p.set_defaults(handler=submit)
    p = sub.add_parser("list", help=gettext_lazy("List tasks, newest first."))
    p.add_argument(
        "--state", dest="states", action="append", default=[], metavar="STATE",
        help=format_lazy(
            gettext_lazy("Only tasks in this state (repeat for several): {states}."),
            states=", ".join(TaskState.values),
        ),
    )  # fmt: skip
    p.add_argument(
        "--type", dest="type_name", metavar="TYPE", help=gettext_lazy("Only tasks of this type.")
    )
    p.add_argument(
        "--owner", metavar="USERNAME", help=gettext_lazy("Only tasks this user submitted.")
    )
    p.add_argument(
        "--limit", default=str(DEFAULT_LIMIT), metavar="N", help=gettext_lazy("At most N rows.")
    )
    p.set_defaults(handler=list_tasks)
    p = sub.add_parser("show", help=gettext_lazy("Everything about one task, with its attempts."))
    p.add_argument("task_id", metavar="ID")
    p.set_defaults(handler=show)
    for name, handler, text in (
        ("cancel", cancel, gettext_lazy("Cancel waiting tasks; ask running ones to stop.")),
        ("retry", retry, gettext_lazy("Run failed or cancelled tasks again.")),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("ids", nargs="+", metavar="ID")
        p.set_defaults(handler=handler)
    sub.add_parser(
        "stats", help=gettext_lazy("Per queue: limit, load, waits, the last hour.")
    ).set_defaults(handler=stats)


# --- submit ---------------------------------------------------------------------------
def submit(
    command: BaseCommand,
    *,
    type_name: str,
    params: str | None,
    priority: str | None,
    description: str,
    wait: bool,
    **options: Any,
) -> None:
    values = parse_params(params)
    level = None if priority is None else parse_int("--priority", priority)
    try:
        task = BatchTask.submit(type_name, values, priority=level, description=description)
    except UnknownTaskType as exc:
        raise CommandError(unknown_type(exc)) from None
    except SUBMIT_ERRORS as exc:
        raise CommandError(one_line(exc)) from None
    if not wait:
        command.stdout.write(str(task.pk))
        return
    command.stdout.write(
        _(
            "Task %(id)s (%(type)s) submitted; waiting for it to end "
            "(Ctrl-C stops the waiting, not the task)."
        )
        % {"id": task.pk, "type": type_name}
    )
    command.stdout.flush()
    try:
        watch(console_for(command), command, task)
    except KeyboardInterrupt:
        raise CommandError(
            _(
                "Stopped waiting; task %(id)s goes on (%(state)s): "
                "`manage.py batchtasks show %(id)s` tells how it ends."
            )
            % {"id": task.pk, "state": task.state},
            returncode=130,
        ) from None
    report_outcome(command, task)


def parse_params(text: str | None) -> dict[str, Any]:
    """``--params``: a JSON object given inline or as ``@file``; ``{}`` when absent."""
    if text is None:
        return {}
    source = "--params"
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise CommandError(
                _("Cannot read parameters from %(path)s: %(error)s.")
                % {"path": repr(str(path)), "error": why}
            ) from None
        source = _("The file %(path)s") % {"path": repr(str(path))}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(
            _("%(source)s is not valid JSON: %(error)s at line %(line)s column %(column)s.")
            % {"source": source, "error": exc.msg, "line": exc.lineno, "column": exc.colno}
        ) from None
    if not isinstance(value, dict):
        raise CommandError(
            _("%(source)s must hold a JSON object such as %(example)s, not %(type)s %(value)s.")
            % {
                "source": source,
                "example": """'{"steps": 10}'""",
                "type": type(value).__name__,
                "value": repr(value),
            }
        )
    return value


def report_outcome(command: BaseCommand, task: BatchTask) -> None:
    """The success line, or ``CommandError`` with the error of a task that did not succeed."""
    if task.state == TaskState.SUCCEEDED:
        result = json.dumps(task.result, ensure_ascii=False)
        if len(result) > RESULT_CHARS:
            result = result[:RESULT_CHARS] + "…"
        took = monitor.duration_text(seconds_between(task.started_at, task.finished_at))
        command.stdout.write(
            _("Task %(id)s succeeded in %(took)s; result: %(result)s")
            % {"id": task.pk, "took": took, "result": result}
        )
        return
    error = task.error
    why = f"{error.type}: {error.message}" if error else _("no error recorded")
    line = _("Task %(id)s %(state)s: %(error)s") % {
        "id": task.pk,
        "state": task.state,
        "error": why,
    }
    raise CommandError(one_line(line))


# --- list and show ----------------------------------------------------------------------
def list_tasks(
    command: BaseCommand,
    *,
    states: list[str],
    type_name: str | None,
    owner: str | None,
    limit: str,
    **options: Any,
) -> None:
    tasks = BatchTask.objects.select_related("definition").with_owner().order_by("-id")
    if states:
        tasks = tasks.filter(state__in=[parse_state(s) for s in states])
    if type_name is not None:
        tasks = tasks.of_type(check_type(type_name))
    if owner is not None:
        tasks = tasks.for_owner(find_user(owner))
    count = parse_int("--limit", limit, low=1, high=10_000)
    table = Table(
        _("ID"), _("Type"), _("State"), _("Progress"), _("Owner"), _("Prio"), _("Created"),
        _("Description"),
    )  # fmt: skip
    for task in tasks[:count]:
        table.add_row(
            *cells(
                task.pk, task.type_name, task.state, f"{task.progress_percent}%",
                task.owner.get_username() if task.owner else "-", task.priority,
                local_time(task.created_at), task.description,
            )
        )  # fmt: skip
    console = console_for(command)
    console.print(table if table.row_count else Text(_("No tasks match.")))


def show(command: BaseCommand, *, task_id: str, **options: Any) -> None:
    (task,) = tasks_by_id([task_id])
    now = monitor.database_now(task._state.db or router.db_for_read(BatchTask))
    console = console_for(command)
    facts = Table.grid(padding=(0, 2))
    for name, value in describe(task, now):
        facts.add_row(Text(name, style="bold"), Text(value))
    title = _("Task %(id)s: %(type)s, %(state)s")
    console.print(
        Text(title % {"id": task.pk, "type": task.type_name, "state": task.state}, style="bold")
    )
    console.print(facts)
    attempts = Table(
        "#", _("Outcome"), _("Worker"), _("Started"), _("Finished"), _("Error"),
        title=_("Attempts"),
    )  # fmt: skip
    for a in task.attempts.order_by("number"):
        error = f"{a.error_type}: {a.error_message}" if a.error_type else ""
        attempts.add_row(
            *cells(a.number, a.outcome, a.worker, local_time(a.started_at),
                   local_time(a.finished_at), error)
        )  # fmt: skip
    console.print(attempts if attempts.row_count else Text(_("Attempts: none ended yet.")))


def describe(task: BatchTask, now: Any) -> list[tuple[str, str]]:
    """The facts of ``show``, as (name, value) pairs; ages measured at ``now``."""
    end = task.finished_at or (now if task.state == TaskState.RUNNING else None)
    facts = [
        (_("description"), task.description or "-"),
        (_("owner"), task.owner.get_username() if task.owner else "-"),
        (_("priority"), str(task.priority)),
        (_("queue"), task.queue or task.definition.queue),
        (
            _("attempt"),
            _("%(attempt)s (runs lost with their worker: %(lost)s)")
            % {"attempt": task.attempt, "lost": task.lost_runs},
        ),
        (_("worker"), task.worker or "-"),
        (
            _("created"),
            _("%(time)s (%(age)s ago)")
            % {"time": local_time(task.created_at), "age": ago(now, task.created_at)},
        ),
        (_("run after"), local_time(task.run_after)),
        (_("queued"), local_time(task.queued_at)),
        (_("started"), local_time(task.started_at)),
        (_("finished"), local_time(task.finished_at)),
        (_("ran for"), monitor.duration_text(seconds_between(task.started_at, end))),
        (_("progress"), f"{task.progress_percent}% {task.progress_message}".rstrip()),
        (_("cancel requested"), _("yes") if task.cancel_requested else _("no")),
        (_("unique key"), task.unique_key or "-"),
        (_("concurrency key"), task.concurrency_key or "-"),
        (_("rate key"), task.rate_key or "-"),
        (_("params"), pretty(task.params)),
        (_("result"), pretty(task.result)),
    ]
    parents, children = _linked(task.parents()), _linked(task.children())
    if parents:
        on_failure = _("%(parents)s (on failure: %(policy)s)")
        facts.append(
            (_("depends on"), on_failure % {"parents": parents, "policy": task.on_parent_failure})
        )
        if task.state == TaskState.BLOCKED:
            pending = _("%(count)s of them") % {"count": task.pending_parents}
            facts.append((_("waiting for"), pending))
    if children:
        facts.append((_("children"), children))
    if task.error is not None:
        facts.append((_("error"), f"{task.error.type}: {task.error.message}"))
        facts.append((_("traceback"), task.error.traceback.rstrip() or "-"))
    return facts


#: The most parents or children ``show`` names (a group's ``then`` has thousands).
LINKS_SHOWN = 20


def _linked(tasks: Any) -> str:
    """``#12 succeeded, #13 running`` for the first ``LINKS_SHOWN`` of ``tasks``."""
    rows = list(tasks.values_list("pk", "state")[: LINKS_SHOWN + 1])
    text = ", ".join(f"#{pk} {state}" for pk, state in rows[:LINKS_SHOWN])
    if len(rows) > LINKS_SHOWN:
        text += _(" and %(count)s more") % {"count": tasks.count() - LINKS_SHOWN}
    return text


# --- cancel and retry -----------------------------------------------------------------
def cancel(command: BaseCommand, *, ids: list[str], **options: Any) -> None:
    for task in tasks_by_id(ids):
        already = _("Task %(id)s: already %(state)s; nothing to cancel.")
        if task.state in FINAL_STATES:
            line = already
        elif task.cancel() and task.state == TaskState.CANCELLED:
            line = _("Task %(id)s: cancelled.")
        elif task.state == TaskState.RUNNING:
            line = _(
                "Task %(id)s: running; asked to stop (it ends as cancelled once its worker "
                "sees it)."
            )
        else:
            line = already
        command.stdout.write(line % {"id": task.pk, "state": task.state})


def retry(command: BaseCommand, *, ids: list[str], **options: Any) -> None:
    refused = []
    for task in tasks_by_id(ids):
        try:
            applied = task.retry()
        except UniqueKeyConflict as exc:
            refused.append(
                _("Task %(id)s not retried: %(error)s") % {"id": task.pk, "error": one_line(exc)}
            )
            continue
        if applied:
            command.stdout.write(
                _("Task %(id)s: will run again as attempt %(attempt)s.")
                % {"id": task.pk, "attempt": task.attempt}
            )
        else:
            refused.append(
                _("Task %(id)s is %(state)s; only failed or cancelled tasks can be retried.")
                % {"id": task.pk, "state": task.state}
            )
    if refused:
        raise CommandError(" ".join(refused))


# --- stats ------------------------------------------------------------------------------
def stats(command: BaseCommand, **options: Any) -> None:
    db = router.db_for_read(BatchTask)
    now = monitor.database_now(db)
    queues = monitor.queue_loads(now, db, monitor.finished_by_minute(now, db))
    online = sum(1 for w in monitor.workers(now, db) if w.state == WorkerState.ONLINE)
    table = Table(
        _("Queue"), _("Limit"), _("Running"), _("Queued"), _("Waiting"), _("Oldest wait"),
        _("Ended 1 h"), _("Failed 1 h"),
        title=_("Queues at %(time)s; workers online: %(online)s")
        % {"time": local_time(now), "online": online},
    )  # fmt: skip
    for queue in queues:
        table.add_row(*load_cells(queue.name, queue.max_concurrency, queue.load))
    total = sum((q.load for q in queues), monitor.Load())
    table.add_section()
    table.add_row(*load_cells(_("all queues"), None, total, limit_text="-"))
    console_for(command).print(table)


def load_cells(
    name: str, limit: int | None, load: monitor.Load, *, limit_text: str = ""
) -> list[Text]:
    limit_text = limit_text or _("unlimited")
    later = _("%(waiting)s (%(later)s later)")
    waiting = later % {"waiting": load.waiting, "later": load.delayed} if load.delayed else ""
    waiting = waiting or str(load.waiting)
    return cells(
        name, limit_text if limit is None else limit, load.running, load.queued, waiting,
        load.oldest_wait_text, load.finished_hour, load.failed_hour,
    )  # fmt: skip


# --- parsing and formatting -------------------------------------------------------------
def parse_int(option: str, text: str, *, low: int | None = None, high: int | None = None) -> int:
    """``text`` as an integer, or ``CommandError`` naming ``option``."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or (low is not None and value < low) or (high is not None and value > high):
        values = {"option": option, "low": low, "high": high, "text": repr(text)}
        if low is not None:
            message = _("%(option)s must be a whole number from %(low)s to %(high)s, not %(text)s.")
        else:
            message = _("%(option)s must be a whole number, not %(text)s.")
        raise CommandError(message % values)
    return value


def parse_state(text: str) -> str:
    if text not in TaskState.values:
        raise CommandError(
            _("Unknown state %(state)s; use one of %(states)s.")
            % {"state": repr(text), "states": ", ".join(TaskState.values)}
        )
    return text


def check_type(name: str) -> str:
    """``name`` if a task type has it (registered or in the database), else the registry's
    ``UnknownTaskType`` message with its close-name hint."""
    if not BatchTaskDefinition.objects.filter(name=name).exists():
        try:
            registry.get(name)
        except UnknownTaskType as exc:
            raise CommandError(unknown_type(exc)) from None
    return name


def unknown_type(exc: UnknownTaskType) -> str:
    """The registry's message with its close-name hint, but without the list of every
    type (one line on a terminal); ``workers`` lists them."""
    message = one_line(exc.summary)
    return _("%(error)s `manage.py batchtasks workers` lists the types.") % {"error": message}


def find_user(username: str) -> Any:
    model = get_user_model()
    try:
        return model._default_manager.get_by_natural_key(username)
    except model.DoesNotExist:
        raise CommandError(_("No user called %(name)s.") % {"name": repr(username)}) from None


def tasks_by_id(texts: list[str]) -> list[BatchTask]:
    """The tasks with these ids, in the order given; ``CommandError`` if any is not one."""
    ids = list(dict.fromkeys(parse_int("ID", t, low=1, high=MAX_ID) for t in texts))
    found = BatchTask.objects.select_related("definition").with_owner().in_bulk(ids)
    missing = [str(i) for i in ids if i not in found]
    if missing:
        raise CommandError(
            _("No task with id %(ids)s; `manage.py batchtasks list` shows tasks.")
            % {"ids": ", ".join(missing)}
        )
    return [found[i] for i in ids]
