"""The shop on batchtasks. Its Celery app is imported with the package, as Celery's
Django guide asks, so that every process that sets Django up (the script, a view, a
management command) publishes with the app's settings (broker, transport options)."""

from .celery import app as celery_app

__all__ = ["celery_app"]
