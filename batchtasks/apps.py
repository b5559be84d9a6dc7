"""Django app configuration: wire the layers together at startup.

Loads the plugin modules, hands the services' operations down to the models (the one
seam from the models upward), connects the Celery signal handlers and the system
checks, and syncs definitions and schedules on migrate.
"""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_delete, post_migrate
from django.utils.translation import gettext_lazy as _


class BatchTasksConfig(AppConfig):
    name = "batchtasks"
    verbose_name = _("Batch tasks")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .core.conf import get_settings
        from .core.registry import registry
        from .models import install_operations
        from .models.owners import forget_owner
        from .services.operations import operations
        from .worker import signals  # noqa: F401  (connects the Celery signal handlers)

        install_operations(operations)
        registry.load(get_settings().PLUGINS)
        post_migrate.connect(_sync_definitions, sender=self)
        post_delete.connect(forget_owner, sender=settings.AUTH_USER_MODEL)


def _sync_definitions(*, using: str, plan: Any = None, **kwargs: Any) -> None:
    from django.db import connections, router

    from .models import BatchTaskDefinition, BatchTaskSchedule
    from .services.definitions import sync_definitions
    from .services.schedule_rows import sync_schedules

    if router.allow_migrate_model(using, BatchTaskDefinition):
        sync_definitions(using=using)
        # Not after a migration back to before the schedules' table.
        if BatchTaskSchedule._meta.db_table in connections[using].introspection.table_names():
            sync_schedules(using=using)
