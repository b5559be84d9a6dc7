"""The router of a task database of its own (``BATCHTASKS["DATABASE"]``).

Put ``"batchtasks.db.router.TaskDatabaseRouter"`` in ``DATABASE_ROUTERS`` (before routers
that claim every model, after ones that route other apps' models more precisely). It
sends every read and write of batchtasks' models to that alias, lets their migrations run
there and nowhere else, and lets nothing else migrate there: the task database holds the
task tables alone. API tokens are not task tables: they stay with the users. Without the setting it has no opinion.

A task's owner is a user of the application's database: the relation is allowed across
the two, and a user reached from a task (``task.owner``) is read from "default", not
from the database the task came from (Django's fallback without a router's answer).
"""

from __future__ import annotations

from typing import Any

from django.db import DEFAULT_DB_ALIAS

from ..core.conf import get_settings

APP_LABEL = "batchtasks"
#: batchtasks' models that are the users' credentials, not task churn: they stay with the
#: users in the application's database (an API token is read with its user on every
#: request it authenticates).
WITH_THE_USERS = frozenset({"apitoken"})


def _ours(model: Any) -> bool:
    meta = model._meta
    return bool(meta.app_label == APP_LABEL and meta.model_name not in WITH_THE_USERS)


class TaskDatabaseRouter:
    """Routes batchtasks' models to ``BATCHTASKS["DATABASE"]``."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return self._route(model, hints)

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return self._route(model, hints)

    def _route(self, model: Any, hints: dict[str, Any]) -> str | None:
        alias = get_settings().DATABASE
        if alias is None:
            return None
        if _ours(model):
            return alias
        instance = hints.get("instance")
        if instance is not None and _ours(type(instance)):
            return DEFAULT_DB_ALIAS  # a task's owner: the application's user
        return None

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        if get_settings().DATABASE is None:
            return None
        return True if _ours(type(obj1)) or _ours(type(obj2)) else None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        alias = get_settings().DATABASE
        if alias is None:
            return None
        if app_label == APP_LABEL and model_name not in WITH_THE_USERS:
            return db == alias
        return False if db == alias else None
