"""``manage.py batchtasks <workers|dispatch|sync>``: thin entry points to the app."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from batchtasks.services.matrix import build_matrix, render_matrix


class Command(BaseCommand):
    help = (
        "Operate batch tasks: print the worker matrix, run a dispatch pass, sweep, purge, "
        "sync definitions."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="ACTION")
        sub.required = True
        sub.add_parser(
            "workers",
            help="Print queues, types, limits and the celery worker lines that serve them.",
        )
        dispatch = sub.add_parser("dispatch", help="Run one dispatch pass for queues.")
        dispatch.add_argument("queues", nargs="*", help="Queue names (default: all).")
        sub.add_parser("sync", help="Create missing definition and queue rows from the registry.")
        sub.add_parser(
            "sweep",
            help="Once: recover attempts with expired leases, republish lost messages, "
            "purge past retention, mark silent workers offline.",
        )
        sub.add_parser("purge", help="Delete finished tasks older than their type's retention.")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        handler = getattr(self, f"handle_{action}")
        handler(**options)

    def handle_workers(self, **options: Any) -> None:
        from batchtasks.services.definitions import sync_definitions

        sync_definitions()
        self.stdout.write(render_matrix(build_matrix()))

    def handle_dispatch(self, *, queues: list[str], **options: Any) -> None:
        from batchtasks.models import BatchQueue
        from batchtasks.services.dispatch import dispatch_all

        if queues:
            known = set(BatchQueue.objects.filter(name__in=queues).values_list("name", flat=True))
            missing = sorted(set(queues) - known)
            if missing:
                raise CommandError(
                    f"Unknown queue(s) {', '.join(map(repr, missing))}; "
                    "`manage.py batchtasks workers` lists the queues."
                )
        count = dispatch_all(queues or None)
        self.stdout.write(f"Dispatched {count} task(s).")

    def handle_sweep(self, **options: Any) -> None:
        from batchtasks.services.sweeper import sweep

        report = sweep(using=_database())
        if report is None:
            raise CommandError("Another process is sweeping right now; try again in a moment.")
        self.stdout.write(f"Swept: {report}.")

    def handle_purge(self, **options: Any) -> None:
        from batchtasks.services.sweeper import purge

        self.stdout.write(f"Purged {purge(using=_database())} finished task(s).")

    def handle_sync(self, **options: Any) -> None:
        from batchtasks.services.definitions import sync_definitions

        definitions = sync_definitions()
        self.stdout.write(f"{len(definitions)} task type definition(s) in the database.")


def _database() -> str:
    from django.db import router

    from batchtasks.models import BatchTask

    return router.db_for_write(BatchTask)
