"""Receivers of batchtasks' app signals that note each one in a file (tests/test_app_api.py).

Connected in every process that loads the plugins (the test process and its workers);
they write only where ``BATCHTASKS_TEST_SIGNAL_NOTES`` names a file.
"""

from __future__ import annotations

import os
from typing import Any

from django.dispatch import receiver

from batchtasks import signals

NOTES_ENV = "BATCHTASKS_TEST_SIGNAL_NOTES"


def _note(line: str) -> None:
    path = os.environ.get(NOTES_ENV)
    if path:
        with open(path, "a") as notes:  # one short append: lines from processes never mix
            notes.write(f"{line} pid={os.getpid()}\n")


@receiver(signals.task_submitted)
def note_submitted(sender: Any, task: Any, type_name: str, **kwargs: Any) -> None:
    _note(f"submitted {task.pk} {type_name} {task.state}")


@receiver(signals.task_started)
def note_started(sender: Any, task: Any, type_name: str, attempt: int, **kwargs: Any) -> None:
    _note(f"started {task.pk} {type_name} attempt={attempt} {task.state}")


@receiver(signals.task_finished)
def note_finished(sender: Any, task: Any, type_name: str, state: str, **kwargs: Any) -> None:
    _note(f"finished {task.pk} {type_name} {state} {task.state}")
