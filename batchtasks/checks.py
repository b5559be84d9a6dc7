"""System checks: bad configuration is an error with a hint, found at startup."""

from __future__ import annotations

import sqlite3
from typing import Any

from django.core import checks
from django.db import connections

from .core.exceptions import BatchTasksError


@checks.register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``BATCHTASKS`` and its per-type overrides must be valid."""
    from .core.conf import get_settings
    from .core.registry import registry

    try:
        conf = get_settings()
    except BatchTasksError as exc:
        return [checks.Error(str(exc), hint="Fix settings.BATCHTASKS.", id="batchtasks.E001")]
    errors: list[checks.CheckMessage] = []
    for name, overrides in conf.TYPES.items():
        if name not in registry:
            errors.append(
                checks.Warning(
                    f"BATCHTASKS['TYPES'] configures {name!r}, which is not a registered type.",
                    hint="Check the name, or add its module to BATCHTASKS['PLUGINS'].",
                    id="batchtasks.W001",
                )
            )
            continue
        try:
            registry.get(name).definition_values(overrides)
        except BatchTasksError as exc:
            errors.append(checks.Error(str(exc), id="batchtasks.E002"))
    return errors + _check_webhooks(conf.WEBHOOK_SECRET)


def _check_webhooks(secret: str | None) -> list[checks.CheckMessage]:
    """Types with a webhook need the secret that signs its requests."""
    from .core.registry import registry

    hooked = [spec.name for spec in registry if spec.webhook is not None]
    if not hooked or secret:
        return []
    return [
        checks.Error(
            f"Task type(s) {', '.join(map(repr, hooked))} declare a webhook, but "
            "BATCHTASKS['WEBHOOK_SECRET'] is not set: their requests could not be signed.",
            hint="Set BATCHTASKS['WEBHOOK_SECRET'] (or the environment variable "
            "BATCHTASKS_WEBHOOK_SECRET) to a long random string the receivers know.",
            id="batchtasks.E005",
        )
    ]


@checks.register(checks.Tags.database)
def check_database(databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """SQLite must support ``UPDATE … RETURNING`` (3.35 or newer)."""
    errors: list[checks.CheckMessage] = []
    for alias in databases or ():
        connection = connections[alias]
        if connection.vendor != "sqlite":
            continue
        version = sqlite3.sqlite_version_info
        if version < (3, 35):
            errors.append(
                checks.Error(
                    f"batchtasks needs SQLite 3.35 or newer; database {alias!r} has "
                    f"{'.'.join(map(str, version))}.",
                    hint="Use a newer Python build or PostgreSQL.",
                    id="batchtasks.E003",
                )
            )
    return errors


@checks.register(checks.Tags.database)
def check_isolation_level(databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The database batchtasks writes to must run READ COMMITTED (PostgreSQL).

    The dispatcher locks a queue's row, then counts the tasks in flight: only READ
    COMMITTED lets the count see what other passes committed while it waited for the
    lock. Under REPEATABLE READ or SERIALIZABLE limits could be overshot or passes fail.
    """
    from django.db import router

    from .models import BatchTask

    alias = router.db_for_write(BatchTask)
    errors: list[checks.CheckMessage] = []
    for name in (alias, f"{alias}:batchtasks"):
        if name not in connections.settings:
            continue
        settings_dict = connections.settings[name]
        if "postgresql" not in settings_dict.get("ENGINE", ""):
            continue
        level = (settings_dict.get("OPTIONS") or {}).get("isolation_level")
        if level is None:
            continue
        from psycopg import IsolationLevel

        if IsolationLevel(level) != IsolationLevel.READ_COMMITTED:
            errors.append(
                checks.Error(
                    f"Database {name!r} is configured with isolation_level="
                    f"{IsolationLevel(level).name}; batchtasks dispatches on it and needs "
                    "READ COMMITTED.",
                    hint="Remove OPTIONS['isolation_level'] (PostgreSQL's default is READ "
                    "COMMITTED), or route batchtasks' models to a database alias that uses it.",
                    id="batchtasks.E004",
                )
            )
    return errors


ROUTER = "batchtasks.db.router.TaskDatabaseRouter"


@checks.register()
def check_task_database(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``BATCHTASKS["DATABASE"]`` names a configured alias, and the routers send the task
    tables there (``TaskDatabaseRouter`` installed)."""
    from django.db import router

    from .core.conf import get_settings
    from .models import BatchTask

    try:
        alias = get_settings().DATABASE
    except BatchTasksError:
        return []  # check_settings reports it
    if alias is None:
        return []
    if alias not in connections.settings:
        return [
            checks.Error(
                f"BATCHTASKS['DATABASE'] is {alias!r}, which is not a key of DATABASES "
                f"({', '.join(map(repr, connections.settings))}).",
                hint=f"Add a DATABASES[{alias!r}] entry for the task tables, or fix the name.",
                id="batchtasks.E006",
            )
        ]
    routed = router.db_for_write(BatchTask), router.db_for_read(BatchTask)
    if routed != (alias, alias):
        return [
            checks.Error(
                f"BATCHTASKS['DATABASE'] is {alias!r}, but the database routers send the "
                f"task tables to {routed[0]!r}.",
                hint=f"Add {ROUTER!r} to DATABASE_ROUTERS, before any router that claims "
                "every model.",
                id="batchtasks.E007",
            )
        ]
    return []
