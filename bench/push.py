"""The indicator's push option: server-sent events under ASGI, what held streams cost.

Command (repository root):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/batchtasks \\
        REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python -m bench.push

Fills a scratch database as bench/poll.py does (fewer tasks by default), serves it with
one uvicorn process (``project.asgi``, ``BATCHTASKS_INDICATOR_PUSH=1``), opens one stream
per user (``GET /batchtasks/api/tasks/active/events/`` with the user's session cookie)
and waits for each stream's first answer; then measures the CPU of uvicorn and of its
PostgreSQL backend while nothing changes (the cost of an idle stream per second: one
check query a second each) and while running tasks report progress (the cost of an
event). ``BENCH_PUSH_*`` variables (below) set the sizes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench.poll import configure, cpu_seconds, fill, progress_reports
from bench.scratch import scratch_database
from bench.server import free_port, serving

USERS = int(os.environ.get("BENCH_PUSH_USERS", "200"))
TASKS = int(os.environ.get("BENCH_PUSH_TASKS", "20000"))
SECONDS = float(os.environ.get("BENCH_PUSH_SECONDS", "20"))
PATH = "/batchtasks/api/tasks/active/events/"


@contextmanager
def uvicorn(env: dict[str, str]) -> Iterator[tuple[int, int]]:
    """One uvicorn process on a free port of 127.0.0.1; yields (port, pid)."""
    port = free_port()
    argv = ["uvicorn", "project.asgi:application", "--port", str(port), "--log-level", "warning"]
    argv += ["--no-access-log", "--timeout-graceful-shutdown", "1"]
    with serving(argv, port, {**env, "BATCHTASKS_INDICATOR_PUSH": "1"}) as server:
        yield port, server.pid


class Listener(threading.Thread):
    """One tab's EventSource: counts the "tasks" events of its stream."""

    def __init__(self, port: int, session: str) -> None:
        super().__init__(daemon=True)
        self.port, self.session, self.events, self.error = port, session, 0, ""
        self.first = threading.Event()

    def run(self) -> None:
        import http.client

        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
            conn.request("GET", PATH, headers={"Cookie": f"sessionid={self.session}"})
            response = conn.getresponse()
            if response.status != 200:
                raise RuntimeError(f"status {response.status}")
            while line := response.readline():
                if line.startswith(b"event: tasks"):
                    self.events += 1
                    self.first.set()
        except Exception as exc:  # a refused stream is a result
            self.error = repr(exc)
            self.first.set()


def backends() -> list[int]:
    """The PostgreSQL backends of the scratch database but this process's own."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        return [row[0] for row in cursor.fetchall()]


def phase(pid: int, listeners: list[Listener], seconds: float) -> dict[str, float]:
    """CPU of uvicorn and of the other backends, and events received, over ``seconds``."""
    events = sum(x.events for x in listeners)
    pg = backends()
    before = cpu_seconds([pid]), cpu_seconds(pg)
    time.sleep(seconds)
    after = cpu_seconds([pid]), cpu_seconds(pg)
    return {
        "uvicorn": after[0] - before[0],
        "postgresql": after[1] - before[1],
        "events": sum(x.events for x in listeners) - events,
    }


def measure() -> list[tuple[str, str]]:
    """Set up, hold the streams, measure and tear down; the table's rows."""
    with scratch_database("push") as url:
        env = configure(url)
        _, sessions = fill(USERS, TASKS)
        with uvicorn(env) as (port, pid):
            listeners = [Listener(port, s) for s in sessions]
            for listener in listeners:
                listener.start()
            for listener in listeners:
                listener.first.wait(120)
            refused = [x.error for x in listeners if x.error]
            time.sleep(2)  # let the first answers settle
            idle = phase(pid, listeners, SECONDS)
            with progress_reports(url):
                busy = phase(pid, listeners, SECONDS)
    held = len(listeners) - len(refused)
    per = held * SECONDS / 1000  # connection-seconds, in thousands: CPU ms per conn-second
    extra = max(0.0, busy["uvicorn"] - idle["uvicorn"])
    why = f": {refused[0]}" if refused else ""
    return [
        ("streams held (refused)", f"{held} ({len(refused)}{why})"),
        (f"nothing changes, {SECONDS:g} s: CPU per held stream per second, uvicorn / PostgreSQL",
         f"{idle['uvicorn'] / per:.3f} / {idle['postgresql'] / per:.3f} ms"),
        (f"progress reports, {SECONDS:g} s: events sent; uvicorn CPU per event above idle",
         f"{busy['events']:.0f}; {extra * 1000 / max(1, busy['events']):.2f} ms"),
        ("uvicorn CPU over the idle phase, share of one core",
         f"{idle['uvicorn'] / SECONDS * 100:.1f} %"),
    ]  # fmt: skip


def main() -> None:
    """Run the benchmark and print its table."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still drop the database
    rows = measure()
    print(f"\n| {PATH} (push, uvicorn), {USERS} users | value |\n|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
