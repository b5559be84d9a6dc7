"""Settings for the test suite: the reference project on the real PostgreSQL and Redis.

Each run gets its own database name and Redis key prefix, so runs on one machine
never see each other's data.
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/batchtasks")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("BATCHTASKS_REDIS_PREFIX", f"batchtasks-test-{os.getpid()}:")
os.environ.setdefault("BATCHTASKS_TEST_DB_NAME", f"test_batchtasks_{os.getpid()}")
os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-not-a-secret")

from project.settings import *  # noqa: F403

if os.environ.get("BATCHTASKS_TEST_CLOCK_SKEW"):
    # A host whose clock is off by this many seconds (tests of the database clock).
    from datetime import timedelta

    from django.utils import timezone

    _skew = timedelta(seconds=float(os.environ["BATCHTASKS_TEST_CLOCK_SKEW"]))
    _true_now = timezone.now
    timezone.now = lambda: _true_now() + _skew

# django.tasks on batchtasks; the workers learn the test functions from PLUGINS.
TASKS = {"default": {"BACKEND": "batchtasks.backends.BatchTasksBackend", "QUEUES": []}}
BATCHTASKS = {**BATCHTASKS, "PLUGINS": [*BATCHTASKS["PLUGINS"], "tests.django_task_functions"]}  # noqa: F405
