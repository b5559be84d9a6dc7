"""The task type of the chaos test (``make chaos``): it sleeps a short while and records
every run in a ledger that is not the task table, so that lost tasks, double
completions, a task running beside itself and a broken concurrency limit are measured
from outside the engine.

The ledger is two tables in the schema ``chaos`` of the database at
``$CHAOS_LEDGER_URL`` (the reference project registers this module only when that is
set), written on a connection of its own, in autocommit, with the database's clock:

- ``chaos.runs``: one row when a run starts (task, attempt, container hostname, pid,
  ``started_at``), ``ended_at`` and ``outcome`` set when its body ends (``done``, or the
  exception that stopped it; a killed process sets nothing);
- ``chaos.finals``: one row each time the task's finalizer is called (once per final
  outcome), with the state it saw.

Two more types serve single scenarios: ``chaos.hog`` (oom_kill), packed four tasks to a
message and consumed by chaos-1 only, whose task with ``params["hog"]`` allocates memory
on its first run until the kernel kills its process; and ``chaos.hooked``
(finalizer_faults), whose finalizer takes ``HOOKED_FINALIZER_SECONDS`` after writing its
row, then its webhook (``$CHAOS_WEBHOOK_URL``, plugins/soak_receiver.py) is posted.

A ledger write that fails (PostgreSQL restarting, its backend terminated) is retried
on a new connection for up to ``LEDGER_PATIENCE`` seconds: the ledger must miss no run.
So that it can, its session writes whatever the server's default (a read-only
failover), and a connection whose server stopped answering (a network partition) is
given up within seconds (TCP keepalives and user timeout), not TCP's quarter of an hour.
A run's end is written as the database's clock less the time since the body ended (by
this process's monotonic clock), so a write that had to wait still says when it ended.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from batchtasks import BatchTaskPlugin, batchtask, finalizer

if TYPE_CHECKING:
    from batchtasks.models import BatchTask

TYPE = "chaos.work"
#: The limit the ledger is checked against (``CHAOS_MAX_CONCURRENCY``, 4 by default).
MAX_CONCURRENCY = int(os.environ.get("CHAOS_MAX_CONCURRENCY", "4"))
#: Seconds a ledger write is retried for before the run fails.
LEDGER_PATIENCE = 60.0
#: Where each run's end is noted on its own host before the ledger hears of it: a worker
#: cut off PostgreSQL stops its runs itself, and may be killed before the ledger answers.
LOCAL_ENDS = os.environ.get("CHAOS_LOCAL_ENDS", "/tmp/chaos-run-ends")

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS chaos;
CREATE TABLE IF NOT EXISTS chaos.runs (
    id bigserial PRIMARY KEY,
    token uuid NOT NULL UNIQUE,
    task_id bigint NOT NULL,
    attempt int NOT NULL,
    host text NOT NULL,
    pid int NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at timestamptz,
    outcome text
);
CREATE TABLE IF NOT EXISTS chaos.finals (
    id bigserial PRIMARY KEY,
    token uuid NOT NULL UNIQUE,
    task_id bigint NOT NULL,
    attempt int NOT NULL,
    state text NOT NULL,
    host text NOT NULL,
    pid int NOT NULL,
    at timestamptz NOT NULL
);
"""

_connection: psycopg.Connection[Any] | None = None
_connection_pid = 0


def ledger_url() -> str:
    """The ledger's database (``CHAOS_LEDGER_URL``)."""
    return os.environ["CHAOS_LEDGER_URL"]


def _ledger() -> psycopg.Connection[Any]:
    """This process's own ledger connection (a forked pool process opens its own)."""
    global _connection, _connection_pid
    if _connection is None or _connection.closed or _connection_pid != os.getpid():
        _connection = psycopg.connect(
            ledger_url(),
            autocommit=True,
            connect_timeout=5,
            application_name="chaos-ledger",
            options="-c default_transaction_read_only=off",
            keepalives=1,
            keepalives_idle=2,
            keepalives_interval=1,
            keepalives_count=3,
            tcp_user_timeout=5000,
        )
        _connection_pid = os.getpid()
    return _connection


def ledger_write(
    sql: str, args: Callable[[], tuple[Any, ...]] | tuple[Any, ...]
) -> list[tuple[Any, ...]]:
    """Run one ledger statement, reconnecting until it succeeds or patience runs out; its
    rows, if it returns any. Statements are idempotent (keyed by a token of the
    caller's): one that did commit before its connection broke may run again. ``args``
    may be a function, called for each try."""
    global _connection
    deadline = time.monotonic() + LEDGER_PATIENCE
    while True:
        try:
            cursor = _ledger().execute(sql, args() if callable(args) else args)
            return cursor.fetchall() if cursor.description else []
        except psycopg.OperationalError:
            if _connection is not None:
                _connection.close()
            _connection = None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@batchtask(
    TYPE,
    max_concurrency=MAX_CONCURRENCY,
    max_lost_runs=10,
    description="Sleep params['seconds'] (0.2 by default), recording the run in a ledger.",
)
class Work(BatchTaskPlugin):
    """Sleep in small steps, checking for cancel; each run is a row in ``chaos.runs``."""

    def run(self, params: dict[str, Any] | None) -> dict[str, Any]:
        return sleep_recorded(self, float((params or {}).get("seconds", 0.2)))


def sleep_recorded(plugin: BatchTaskPlugin, seconds: float) -> dict[str, Any]:
    """Sleep ``seconds`` in small steps, checking for cancel, the run a row in
    ``chaos.runs`` from its start to its end (or what stopped it)."""
    token = begin_run(plugin.task_id, plugin.attempt)
    try:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
            plugin.check_cancelled()
    except BaseException as exc:  # stopped mid-body: when, and by what
        end_run(token, type(exc).__name__)
        raise
    end_run(token, "done")
    return {"run": str(token)}


def begin_run(task_id: int, attempt: int) -> uuid.UUID:
    """A ``chaos.runs`` row for a run starting now; its token, for ``end_run``."""
    token = uuid.uuid4()
    ledger_write(
        "INSERT INTO chaos.runs (token, task_id, attempt, host, pid, started_at) "
        "VALUES (%s, %s, %s, %s, %s, clock_timestamp()) ON CONFLICT (token) DO NOTHING",
        (token, task_id, attempt, socket.gethostname(), os.getpid()),
    )
    return token


FLAKY = "chaos.flaky"


class Flaky(RuntimeError):
    """Raised by ``chaos.flaky`` on its first two attempts (the attempt fails, and retries)."""


@batchtask(
    FLAKY,
    max_attempts=3,
    retry_backoff=0,
    max_lost_runs=10,
    description="Fail attempts 1 and 2, succeed on the third, recording each run in a ledger.",
)
class FlakyWork(BatchTaskPlugin):
    """A run in ``chaos.runs`` per attempt: the first two end ``Flaky``, the third ``done``."""

    def run(self, params: dict[str, Any] | None) -> dict[str, Any]:
        token = begin_run(self.task_id, self.attempt)
        if self.attempt < 3:
            end_run(token, Flaky.__name__)
            raise Flaky(f"attempt {self.attempt} of task {self.task_id} fails on purpose")
        end_run(token, "done")
        return {"run": str(token)}


def end_run(token: uuid.UUID, outcome: str) -> None:
    """The run of ``token`` ended (``done``, or the exception that stopped it), at the
    moment of this call even if the ledger answers later (a worker cut off from it)."""
    ended = time.monotonic()
    note_end_locally(token, outcome)
    ledger_write(
        "UPDATE chaos.runs SET ended_at = clock_timestamp() - make_interval(secs => %s), "
        "outcome = %s WHERE token = %s AND ended_at IS NULL",
        lambda: (time.monotonic() - ended, outcome, token),
    )


def note_end_locally(token: uuid.UUID, outcome: str) -> None:
    """``<token> <outcome> <epoch s>`` in ``LOCAL_ENDS`` (the driver reads the hosts'
    files at the end: ``bench.chaos.stack.Stack.local_ends``). By the real clock: the
    clock_skew scenario shifts ``time.time`` on a worker, not ``clock_gettime``."""
    when = time.clock_gettime(time.CLOCK_REALTIME)
    try:
        with open(LOCAL_ENDS, "a") as notes:
            notes.write(f"{token} {outcome} {when:.6f}\n")
    except OSError:  # the ledger's own row is the record; this one only backs it up
        pass


HOG = "chaos.hog"
#: Tasks of ``chaos.hog`` in one message.
HOG_PACK = 4
#: What a hog allocates at most (MiB) before it gives up: no memory limit killed it.
HOG_CAP = 2048


@batchtask(
    HOG,
    tasks_per_message=HOG_PACK,
    max_lost_runs=10,
    description="Sleep like chaos.work; with params['hog'], allocate until killed first.",
)
class Hog(BatchTaskPlugin):
    """Like ``chaos.work``; with ``params["hog"]`` its first run (the ledger has no
    earlier one of the task) allocates memory after ``seconds``, 16 MiB every 20 ms,
    until the kernel's OOM killer ends its process (which it marks its first choice,
    ``oom_score_adj`` 1000); past ``HOG_CAP`` MiB it fails
    (``MemoryError``: nothing limited its memory)."""

    def run(self, params: dict[str, Any] | None) -> dict[str, Any]:
        params = params or {}
        if not params.get("hog") or earlier_runs(self.task_id):
            return sleep_recorded(self, float(params.get("seconds", 0.2)))
        token = begin_run(self.task_id, self.attempt)
        time.sleep(float(params.get("seconds", 0.2)))
        # The OOM killer's first choice in its cgroup, not the worker's main process.
        Path("/proc/self/oom_score_adj").write_text("1000")
        hoard = []
        for _ in range(HOG_CAP // 16):
            hoard.append(b"\x01" * (16 << 20))  # written: resident at once
            time.sleep(0.02)
        end_run(token, MemoryError.__name__)
        print(f"chaos.hog: {HOG_CAP} MiB and not killed", file=sys.stderr)
        raise MemoryError(f"task {self.task_id} allocated {len(hoard) * 16} MiB unharmed")


def earlier_runs(task_id: int) -> int:
    """How many runs of the task the ledger has (a lost one included)."""
    rows = ledger_write("SELECT count(*) FROM chaos.runs WHERE task_id = %s", (task_id,))
    return int(rows[0][0])


HOOKED = "chaos.hooked"
#: How long ``chaos.hooked``'s finalizer takes after writing its row: a fault can strike
#: while it runs, before its webhook and its record.
HOOKED_FINALIZER_SECONDS = 1.0


@batchtask(
    HOOKED,
    max_lost_runs=10,
    webhook=os.environ.get("CHAOS_WEBHOOK_URL") or None,
    description="Sleep like chaos.work; a slow finalizer, then a webhook.",
)
class Hooked(BatchTaskPlugin):
    """Like ``chaos.work``; its finalizer and webhook are the finalizer_faults' target."""

    def run(self, params: dict[str, Any] | None) -> dict[str, Any]:
        return sleep_recorded(self, float((params or {}).get("seconds", 0.2)))


@finalizer(HOOKED)
def record_final_slowly(task: BatchTask) -> None:
    """``record_final``, then ``HOOKED_FINALIZER_SECONDS`` more inside the finalizer."""
    record_final(task)
    time.sleep(HOOKED_FINALIZER_SECONDS)


@finalizer(TYPE, FLAKY, HOG)
def record_final(task: BatchTask) -> None:
    """Note the final outcome in ``chaos.finals`` (a second row is a second completion)."""
    ledger_write(
        "INSERT INTO chaos.finals (token, task_id, attempt, state, host, pid, at) "
        "VALUES (%s, %s, %s, %s, %s, %s, clock_timestamp()) ON CONFLICT (token) DO NOTHING",
        (uuid.uuid4(), task.pk, task.attempt, str(task.state), socket.gethostname(), os.getpid()),
    )
