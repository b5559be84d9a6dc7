"""Settings for the test suite: the reference project on the real PostgreSQL and Redis.

Each run gets its own database name and Redis key prefix, so runs on one machine
never see each other's data.
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/batchtasks")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("BATCHTASKS_REDIS_PREFIX", f"batchtasks-test-{os.getpid()}:")
# Side by side in one run (pytest -n, pytest-xdist), each process gw0, gw1, … keys of its
# own (pytest-django gives each its own database): inherited from the run's first
# process, the prefix gets the process's name once, and is passed on to its workers.
if os.environ.get("PYTEST_XDIST_WORKER") and not os.environ["BATCHTASKS_REDIS_PREFIX"].endswith(
    f"-{os.environ['PYTEST_XDIST_WORKER']}:"
):
    os.environ["BATCHTASKS_REDIS_PREFIX"] = (
        f"{os.environ['BATCHTASKS_REDIS_PREFIX'].removesuffix(':')}"
        f"-{os.environ['PYTEST_XDIST_WORKER']}:"
    )
os.environ.setdefault("BATCHTASKS_TEST_DB_NAME", f"test_batchtasks_{os.getpid()}")
os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-not-a-secret")
if os.environ.get("BATCHTASKS_TEST_BROKER"):
    # The RabbitMQ leg (.ci/rabbitmq): the broker is that server, in a virtual host of the
    # run's own (tests/rabbitmq.py creates it and deletes it at the end).
    os.environ.setdefault("BATCHTASKS_TEST_VHOST", f"batchtasks-test-{os.getpid()}")
    # BROKER_URL, not CELERY_BROKER_URL: Celery lets that one override what a test sets.
    os.environ.setdefault(
        "BROKER_URL",
        f"{os.environ['BATCHTASKS_TEST_BROKER'].rstrip('/')}/{os.environ['BATCHTASKS_TEST_VHOST']}",
    )

from project.settings import *  # noqa: F403

if os.environ.get("BATCHTASKS_TEST_CLOCK_SKEW"):
    # A host whose clock is off by this many seconds (tests of the database clock).
    from datetime import timedelta

    from django.utils import timezone

    _skew = timedelta(seconds=float(os.environ["BATCHTASKS_TEST_CLOCK_SKEW"]))
    _true_now = timezone.now
    timezone.now = lambda: _true_now() + _skew

# django.tasks on batchtasks; the workers learn the test functions from PLUGINS.
TASKS = {
    "default": {
        "BACKEND": "batchtasks.backends.BatchTasksBackend",
        "QUEUES": [],
        # Type options in code (tests/test_django_task_surfaces.py); BATCHTASKS["TYPES"] wins.
        "OPTIONS": {
            "TYPES": {
                "tests.django_task_surface_functions.limited_by_options": {
                    "max_concurrency": 2,
                    "priority": 30,
                },
                "tests.django_task_surface_functions.limited_by_settings": {
                    "max_concurrency": 3,
                    "priority": 10,
                },
                "tests.django_task_unlisted.double_apart": {"isolation": "process"},
            }
        },
    }
}
BATCHTASKS = {
    **BATCHTASKS,  # noqa: F405
    "PLUGINS": [
        *BATCHTASKS["PLUGINS"],  # noqa: F405
        "tests.django_task_functions",
        "tests.django_upstream.tasks",
        # Receivers of the app signals that note them in a file (tests/test_app_api.py).
        "tests.signal_receivers",
        # A packed type whose finalizer notes whether it held the state lock.
        "tests.held_finalizers",
        "tests.django_task_surface_functions",
        "tests.log_plugins",  # a type that logs while it runs (tests/test_logging.py)
    ],
    "TYPES": {
        "tests.django_task_surface_functions.limited_by_settings": {
            "max_concurrency": 2,
            "priority": -20,
        },
    },
}

# The Celery beat bridge's tests use django-celery-beat's rows where it is installed (not
# in the newest-Django leg, whose Django it does not support yet).
try:
    import django_celery_beat  # noqa: F401
except ImportError:
    pass
else:
    INSTALLED_APPS = [*INSTALLED_APPS, "django_celery_beat"]  # noqa: F405
