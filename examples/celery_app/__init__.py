"""The shop on plain Celery. Its Celery app is imported with the package, as Celery's
Django guide asks, so that every process that sets Django up sends with its settings."""

from .celery import app as celery_app

__all__ = ["celery_app"]
