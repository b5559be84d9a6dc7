#!/usr/bin/env python3
"""The program of the soak's executor type ``soak.exec`` (``plugins/soak.py``): sleep
``params["seconds"]`` (0.2 by default), reporting progress, and record the run in the
chaos ledger (``chaos.runs``, at ``$SOAK_LEDGER_URL``) itself, since an executor's
program, not the worker, is what runs. A SIGTERM (a cancel) ends the run with its
outcome written. Like the worker's plugins (``plugins.chaos.end_run``), it notes the
run's end on its host first (``CHAOS_LOCAL_ENDS``), then writes it to the ledger as the
database's clock less the time since the body ended: cut off PostgreSQL, its ledger
write waits, and the worker stops it before its lease runs out; without the note the
driver took the run for one still going when the next attempt started (an overlap)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

PATIENCE = 60.0
#: The hosts' notes of run ends (the same file as ``plugins.chaos.LOCAL_ENDS``).
LOCAL_ENDS = os.environ.get("CHAOS_LOCAL_ENDS", "/tmp/chaos-run-ends")


def write(sql: str, args: Callable[[], tuple[Any, ...]]) -> None:
    """One ledger statement, on a new connection, retried while PostgreSQL is away
    (``args`` are computed on each try)."""
    deadline = time.monotonic() + PATIENCE
    while True:
        try:
            with psycopg.connect(
                os.environ["SOAK_LEDGER_URL"], autocommit=True, connect_timeout=5
            ) as db:
                db.execute(sql, args())
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def stop(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, stop)
    params = json.load(sys.stdin) or {}
    seconds = float(params.get("seconds", 0.2))
    token = uuid.uuid4()
    write(
        "INSERT INTO chaos.runs (token, task_id, attempt, host, pid, started_at) "
        "VALUES (%s, %s, %s, %s, %s, clock_timestamp()) ON CONFLICT (token) DO NOTHING",
        lambda: (
            token,
            int(os.environ["BATCHTASKS_TASK_ID"]),
            int(os.environ["BATCHTASKS_ATTEMPT"]),
            socket.gethostname(),
            os.getpid(),
        ),
    )
    outcome = "done"
    try:
        print("Progress: 0 sleeping", flush=True)
        time.sleep(seconds)
        print("ResultData: " + json.dumps({"run": str(token)}), flush=True)
    except BaseException as exc:
        outcome = type(exc).__name__
        raise
    finally:
        ended = time.monotonic()
        note_end_locally(token, outcome)
        write(
            "UPDATE chaos.runs SET ended_at = clock_timestamp() - make_interval(secs => %s), "
            "outcome = %s WHERE token = %s AND ended_at IS NULL",
            lambda: (time.monotonic() - ended, outcome, token),
        )


def note_end_locally(token: uuid.UUID, outcome: str) -> None:
    """``<token> <outcome> <epoch s>`` in ``LOCAL_ENDS``, as ``plugins.chaos`` notes."""
    when = time.clock_gettime(time.CLOCK_REALTIME)
    try:
        with open(LOCAL_ENDS, "a") as notes:
            notes.write(f"{token} {outcome} {when:.6f}\n")
    except OSError:  # the ledger's row is the record; this one only backs it up
        pass


if __name__ == "__main__":
    main()
