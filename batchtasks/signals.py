"""Signals for app code: a task was submitted, an attempt started, a task finished.

Each is sent once per event, after the write it reports, in the process that made it:

* ``task_submitted``: in the submitting process, right after the task's row is inserted
  (inside the caller's transaction, if there is one: receivers with effects outside the
  database should use ``transaction.on_commit``). Not sent when ``unique_key`` returns an
  unfinished task that already existed.
* ``task_started``: in the worker's pool process, once per attempt, after the attempt was
  claimed and before the plugin runs.
* ``task_finished``: once, when the task reaches a final state (succeeded, failed,
  cancelled or skipped), after that state is written: in the worker that ran it, in the
  process that cancelled or superseded it while it waited, or in the worker whose sweeper
  gave up on a lost run. An attempt that will run again is not finished.

The sender is the type's plugin class; every signal passes ``task`` (the ``BatchTask``
as stored after the write) and ``type_name``; ``task_started`` adds ``attempt`` and
``task_finished`` adds ``state``. A receiver that raises is logged and never changes
the task or the caller's outcome. Nothing is read from the database for a signal that
has no receivers for that sender.
"""

from __future__ import annotations

from django.dispatch import Signal

#: Sent with ``task`` and ``type_name`` after a task's row is inserted.
task_submitted = Signal()
#: Sent with ``task``, ``type_name`` and ``attempt`` when a worker starts an attempt.
task_started = Signal()
#: Sent with ``task``, ``type_name`` and ``state`` once the task is final.
task_finished = Signal()
