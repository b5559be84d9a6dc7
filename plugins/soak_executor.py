#!/usr/bin/env python3
"""The program of the soak's executor type ``soak.exec`` (``plugins/soak.py``): sleep
``params["seconds"]`` (0.2 by default), reporting progress, and record the run in the
chaos ledger (``chaos.runs``, at ``$SOAK_LEDGER_URL``) itself, since an executor's
program, not the worker, is what runs. A SIGTERM (a cancel) ends the run with its
outcome written."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import uuid
from typing import Any

import psycopg

PATIENCE = 60.0


def write(sql: str, args: tuple[Any, ...]) -> None:
    """One ledger statement, on a new connection, retried while PostgreSQL is away."""
    deadline = time.monotonic() + PATIENCE
    while True:
        try:
            with psycopg.connect(
                os.environ["SOAK_LEDGER_URL"], autocommit=True, connect_timeout=5
            ) as db:
                db.execute(sql, args)
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
        (
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
        write(
            "UPDATE chaos.runs SET ended_at = clock_timestamp(), outcome = %s "
            "WHERE token = %s AND ended_at IS NULL",
            (outcome, token),
        )


if __name__ == "__main__":
    main()
