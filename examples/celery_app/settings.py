"""Settings of the plain Celery shop (the starting point of examples/converted)."""

import os

from celery.schedules import crontab

SECRET_KEY = "example-only"
DEBUG = True
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django_celery_results",
    "examples.celery_app.shop",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("POSTGRES_DB", "shop"),
        "USER": os.environ.get("POSTGRES_USER", "postgres"),
        "HOST": os.environ.get("POSTGRES_HOST", "127.0.0.1"),
    }
}
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = "django-db"  # django-celery-results: AsyncResult reads it
CELERY_TASK_ROUTES = {"examples.celery_app.shop.tasks.*": {"queue": "shop"}}
CELERY_BEAT_SCHEDULE = {
    "nightly-report": {
        "task": "examples.celery_app.shop.tasks.build_report",
        "schedule": crontab(hour=2, minute=30),
        "args": (5,),
    }
}
