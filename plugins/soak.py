"""The task types of the soak (``make soak``): a mixed load of every kind of type the
engine runs, each run recorded in the chaos ledger (``plugins/chaos.py``'s schema and
writer: ``chaos.runs`` a row per run, ``chaos.finals`` a row per finalizer call), so
that the soak's driver (``bench/soak``) judges loss, double completions, overlaps and
limits from outside the engine, as the chaos test does.

The reference project registers this module when ``SOAK_WEBHOOK_URL`` is set (with
``CHAOS_LEDGER_URL``): the web types POST their outcomes there too, to the soak's
receiver (``plugins/soak_receiver.py``), which records each call in ``soak.webhooks``.

- ``soak.limited`` (``max_concurrency`` ``LIMIT``) and ``soak.open`` (no limit): sleep
  ``params["seconds"]``, checking for cancel; submittable over the API, with a webhook;
- ``soak.tiny``: next to nothing, ``tasks_per_message=TINY_PACK`` (many tasks a message);
- ``soak.timed``: ``timeout=TIMED_LIMIT`` seconds, one attempt: a longer run fails;
- ``soak.process``: ``isolation="process"``, each attempt in a child of its own;
- ``soak.exec``: an executor, the program ``plugins/soak_executor.py`` (it writes its
  own ledger rows, from ``SOAK_LEDGER_URL``);
- ``soak.scheduled``: what the project's schedule ``soak-tick`` submits (``every``);
- ``soak.child``: the child of ``depends_on`` and ``group.then``.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchtasks import BatchTaskPlugin, ExecutorPlugin, batchtask, finalizer
from plugins.chaos import ledger_write, sleep_recorded

if TYPE_CHECKING:
    from batchtasks.models import BatchTask

#: ``soak.limited``'s limit, which the driver checks the ledger against.
LIMIT = 2
TINY_PACK = 10
TIMED_LIMIT = 2
WEBHOOK = os.environ.get("SOAK_WEBHOOK_URL") or None
TYPES = (
    "soak.limited",
    "soak.open",
    "soak.tiny",
    "soak.timed",
    "soak.process",
    "soak.exec",
    "soak.scheduled",
    "soak.child",
)
#: The types with a limit, for the driver's check.
LIMITS = {"soak.limited": LIMIT}


class Sleeper(BatchTaskPlugin):
    """Sleep ``params["seconds"]`` in small steps, checking for cancel; the run is a row
    in ``chaos.runs`` from start to end."""

    default_seconds = 0.2

    def run(self, params: dict[str, Any] | None) -> dict[str, Any]:
        return sleep_recorded(self, float((params or {}).get("seconds", self.default_seconds)))


@batchtask("soak.limited", max_concurrency=LIMIT, max_lost_runs=10, web=True, webhook=WEBHOOK)
class Limited(Sleeper):
    """A type of at most ``LIMIT`` runs at once."""

    default_seconds = 0.5


@batchtask("soak.open", max_lost_runs=10, web=True, webhook=WEBHOOK)
class Open(Sleeper):
    """A type without a limit, which the simulated user submits, cancels and retries."""


@batchtask("soak.tiny", max_lost_runs=10, tasks_per_message=TINY_PACK)
class Tiny(Sleeper):
    """Tiny tasks, packed ``TINY_PACK`` to a message."""

    default_seconds = 0.0


@batchtask("soak.timed", max_lost_runs=10, timeout=TIMED_LIMIT, max_attempts=1)
class Timed(Sleeper):
    """Fails past ``TIMED_LIMIT`` seconds (``TimeLimitExceeded``)."""


@batchtask("soak.process", max_lost_runs=10, isolation="process")
class Isolated(Sleeper):
    """Each attempt in a child process forked from the template."""


@batchtask("soak.exec", max_lost_runs=10, isolation="executor")
class Program(ExecutorPlugin):
    """An external program (``plugins/soak_executor.py``) that writes its ledger rows."""

    command = [sys.executable, str(Path(__file__).with_name("soak_executor.py"))]
    environment = {"SOAK_LEDGER_URL": "SOAK_LEDGER_URL"}


@batchtask("soak.scheduled", max_lost_runs=10)
class Scheduled(Sleeper):
    """Submitted by the schedule ``soak-tick``."""

    default_seconds = 0.1


@batchtask("soak.child", max_lost_runs=10)
class Child(Sleeper):
    """Waits for its parents (``depends_on``, ``group.then``)."""

    default_seconds = 0.1


@finalizer(*TYPES)
def record_final(task: BatchTask) -> None:
    """Note the final outcome in ``chaos.finals`` (a second row for one ``attempt`` is a
    second completion of one outcome)."""
    ledger_write(
        "INSERT INTO chaos.finals (token, task_id, attempt, state, host, pid, at) "
        "VALUES (%s, %s, %s, %s, %s, %s, clock_timestamp()) ON CONFLICT (token) DO NOTHING",
        (uuid.uuid4(), task.pk, task.attempt, str(task.state), socket.gethostname(), os.getpid()),
    )
