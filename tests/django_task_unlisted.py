"""``django.tasks`` functions whose module no worker lists in ``BATCHTASKS["PLUGINS"]``
(tests/test_django_tasks.py): a worker imports it when it meets the first task."""

from __future__ import annotations

import os

from batchtasks.backends.django_tasks import FRAMEWORK

if FRAMEWORK == "django.tasks":
    from django.tasks import task  # type: ignore[import-not-found,unused-ignore]
else:
    from django_tasks import task


@task
def double(number: int) -> int:
    """Twice the number."""
    return 2 * number


@task
def double_apart(number: int) -> dict[str, int]:
    """Twice the number, in a child process (tests/settings.py gives it process isolation)."""
    return {"double": 2 * number, "pid": os.getpid()}
