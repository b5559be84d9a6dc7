"""The soak's executor program (``plugins/soak_executor.py``) writes its own ledger rows.
Cut off PostgreSQL, its ledger write waits, and the worker stops it before its lease runs
out: it must note its run's end on its host first (as ``plugins.chaos.end_run`` does),
or the driver takes the run for one still going when the next attempt starts (a soak
reported a task overlapping itself that way)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from bench.chaos.ledger import RUNS_SQL, runs_of
from bench.chaos.stack import Stack
from tests.netfault import proxied
from tests.workers import database_url, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

PROGRAM = Path(__file__).resolve().parent.parent / "plugins" / "soak_executor.py"
#: The ledger's table of runs (``plugins.chaos.SCHEMA``; importing that module would
#: register the chaos suite's task types in this process).
RUNS_TABLE = """
CREATE SCHEMA IF NOT EXISTS chaos;
CREATE TABLE IF NOT EXISTS chaos.runs (
    id bigserial PRIMARY KEY, token uuid NOT NULL UNIQUE, task_id bigint NOT NULL,
    attempt int NOT NULL, host text NOT NULL, pid int NOT NULL,
    started_at timestamptz NOT NULL, ended_at timestamptz, outcome text
);
"""


def test_a_run_whose_ledger_write_waits_notes_its_end_on_its_host(tmp_path: Path) -> None:
    with connection.cursor() as cursor:
        cursor.execute(RUNS_TABLE)
    s = connection.settings_dict
    direct = f"{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}"
    ends = tmp_path / "ends"
    with proxied((s["HOST"] or "127.0.0.1", int(s["PORT"] or 5432))) as proxy:
        env = {
            **os.environ,
            "SOAK_LEDGER_URL": database_url().replace(f"@{direct}/", f"@127.0.0.1:{proxy.port}/"),
            "CHAOS_LOCAL_ENDS": str(ends),
            "BATCHTASKS_TASK_ID": "7",
            "BATCHTASKS_ATTEMPT": "1",
        }
        program = subprocess.Popen(
            [sys.executable, str(PROGRAM)], stdin=subprocess.PIPE, env=env, text=True
        )
        assert program.stdin is not None
        program.stdin.write(json.dumps({"seconds": 1.0}))
        program.stdin.close()
        with psycopg.connect(database_url(), autocommit=True) as ledger:
            wait_for(lambda: ledger.execute("SELECT count(*) FROM chaos.runs").fetchone()[0])
            proxy.cut()  # the start is written; the end's write will wait
            wait_for(ends.exists, timeout=30)
            noted = time.time()
            time.sleep(1.0)
            program.send_signal(signal.SIGTERM)  # the worker stops it, as self-fencing does
            program.wait(timeout=30)
            rows = ledger.execute(RUNS_SQL, ([7],)).fetchall()

    (run,) = runs_of(rows, Stack.parse_local_ends(ends.read_text()))
    assert run.outcome == "done"
    assert run.ended is not None and run.ended.timestamp() <= noted
    assert rows[0][6] is None, "the ledger heard of the end: the cut did not hold it up"
