"""pytest fixtures for projects that submit batch tasks (the ``pytest11`` entry point
``batchtasks`` loads this module; ``-p batchtasks.testing.pytest_plugin`` does too).

* ``batchtasks_run``: a ``TaskRunner`` (``batchtasks.testing.run_tasks``); submitted
  tasks run in the test's process at commit (``transaction=True`` tests), and
  ``batchtasks_run.run_due()`` runs what is due (needed in ``django_db`` tests, whose
  transaction never commits, and for tasks whose ``run_after`` or backoff has passed).
* ``batchtasks_capture``: a ``CapturedTasks`` (``batchtasks.testing.capture_tasks``):
  ``.tasks``, ``.types``, ``.params``; nothing runs, nothing reaches the broker.

Both request pytest-django's ``db`` fixture (a ``transaction=True`` mark or the
``transactional_db`` fixture still makes the test transactional). Nothing from Django is
imported here at import time: pytest loads plugins before Django is set up.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .capture import CapturedTasks
    from .running import TaskRunner


@pytest.fixture
def batchtasks_run(db: None) -> Iterator[TaskRunner]:
    """Run submitted batch tasks in this process, through a worker's steps."""
    from .running import run_tasks

    # Nothing runs at teardown: after the test's assertions it could change nothing.
    with run_tasks(run_on_exit=False) as runner:
        yield runner


@pytest.fixture
def batchtasks_capture(db: None) -> Iterator[CapturedTasks]:
    """Capture submitted batch tasks without running them."""
    from .capture import capture_tasks

    with capture_tasks() as captured:
        yield captured
