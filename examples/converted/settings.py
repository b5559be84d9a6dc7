"""Settings of the shop on batchtasks (examples/celery_app converted)."""

import os

SECRET_KEY = "example-only"
DEBUG = True
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "batchtasks",  # instead of django_celery_results: the task table is the result
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
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # batchtasks needs it
# No CELERY_TASK_ROUTES (each type names its queue) and no CELERY_BEAT_SCHEDULE (the
# nightly report's schedule is on its type; every worker runs due ticks, no beat).
BATCHTASKS = {"PLUGINS": ["examples.converted.shop.tasks"]}
