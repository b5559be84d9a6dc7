"""Django app configuration: load plugins, connect signals, sync definitions on migrate."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _


class BatchTasksConfig(AppConfig):
    name = "batchtasks"
    verbose_name = _("Batch tasks")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, signals  # noqa: F401  (registers checks and Celery signal handlers)
        from .conf import get_settings
        from .registry import registry

        registry.load(get_settings().PLUGINS)
        post_migrate.connect(_sync_definitions, sender=self)


def _sync_definitions(*, using: str, plan: Any = None, **kwargs: Any) -> None:
    from django.db import router

    from .definitions import sync_definitions
    from .models import BatchTaskDefinition

    if router.allow_migrate_model(using, BatchTaskDefinition):
        sync_definitions(using=using)
