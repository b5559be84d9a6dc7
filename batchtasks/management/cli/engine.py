"""The engine's own chores: the worker matrix, dispatch, sync, sweep, purge."""

from __future__ import annotations

import math
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import router
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext


def add(sub: Any) -> None:
    sub.add_parser(
        "workers",
        help=gettext_lazy(
            "Print queues, types, limits and the celery worker lines that serve them."
        ),
    ).set_defaults(handler=workers)
    dispatch_parser = sub.add_parser(
        "dispatch", help=gettext_lazy("Run one dispatch pass for queues.")
    )
    dispatch_parser.add_argument(
        "queues", nargs="*", help=gettext_lazy("Queue names (default: all).")
    )
    dispatch_parser.set_defaults(handler=dispatch)
    sub.add_parser(
        "sync", help=gettext_lazy("Create missing definition and queue rows from the registry.")
    ).set_defaults(handler=sync)
    sub.add_parser(
        "sweep",
        help=gettext_lazy(
            "Once: recover attempts with expired leases, republish lost messages, "
            "purge past retention, mark silent workers offline."
        ),
    ).set_defaults(handler=sweep)
    sub.add_parser(
        "purge", help=gettext_lazy("Delete all finished tasks older than their type's retention.")
    ).set_defaults(handler=purge)


def workers(command: BaseCommand, **options: Any) -> None:
    from batchtasks.services.definitions import sync_definitions
    from batchtasks.services.matrix import build_matrix, render_matrix

    sync_definitions()
    command.stdout.write(render_matrix(build_matrix()))


def dispatch(command: BaseCommand, *, queues: list[str], **options: Any) -> None:
    from batchtasks.models import BatchQueue
    from batchtasks.services.dispatch import dispatch_all

    if queues:
        known = set(BatchQueue.objects.filter(name__in=queues).values_list("name", flat=True))
        missing = sorted(set(queues) - known)
        if missing:
            raise CommandError(
                _("Unknown queue(s) %(queues)s; `manage.py batchtasks workers` lists the queues.")
                % {"queues": ", ".join(map(repr, missing))}
            )
    count = dispatch_all(queues or None)
    command.stdout.write(
        ngettext("Dispatched %(count)s task.", "Dispatched %(count)s tasks.", count)
        % {"count": count}
    )


def sweep(command: BaseCommand, **options: Any) -> None:
    from batchtasks.services.sweeper import sweep as sweep_once

    report = sweep_once(using=database())
    if report is None:
        raise CommandError(_("Another process is sweeping right now; try again in a moment."))
    command.stdout.write(_("Swept: %(report)s.") % {"report": report})


def purge(command: BaseCommand, **options: Any) -> None:
    from batchtasks.services.sweeper import purge as purge_finished

    # To the end, unlike a sweep's purge (``PURGE_SECONDS``); still pausing after each
    # chunk as long as it took, so that submits meanwhile keep their pace.
    purged = purge_finished(using=database(), budget=math.inf)
    command.stdout.write(
        ngettext("Purged %(count)s finished task.", "Purged %(count)s finished tasks.", purged)
        % {"count": purged}
    )


def sync(command: BaseCommand, **options: Any) -> None:
    from batchtasks.services.definitions import sync_definitions

    definitions = sync_definitions()
    count = len(definitions)
    command.stdout.write(
        ngettext(
            "%(count)s task type definition in the database.",
            "%(count)s task type definitions in the database.",
            count,
        )
        % {"count": count}
    )


def database() -> str:
    """The database batch tasks are written to."""
    from batchtasks.models import BatchTask

    return router.db_for_write(BatchTask)
