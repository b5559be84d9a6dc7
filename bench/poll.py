"""The running-tasks indicator's poll, GET /batchtasks/api/tasks/active/, under load.

Command (repository root; ``make bench`` runs it too, ``python -m bench.run poll`` alone):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/batchtasks \
        REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python -m bench.poll

Fills a scratch database (``<DATABASE_URL name>_poll_<pid>``, dropped at the end) with
100,000 tasks of 200 users, serves it with gunicorn on 127.0.0.1 (``gthread`` workers with
keep-alive, as docs/how-to/web.md recommends; ``BENCH_POLL_WORKER_CLASS=sync``) and polls
it from a load-generator process with each user's session cookie and ``If-None-Match``,
as the indicator does (bench/poll_load.py, which keeps the cookies the server sets): first
while nothing changes (every answer a 304: the row "gunicorn CPU per 304 answer"), then
with progress reports; then measures the fast path's own CPU per 304 in this process
(bench/poll_fast.py), times the SQL of single polls and EXPLAINs the tasks query
(bench/poll_sql.py). ``BENCH_POLL_*`` variables (below) set the sizes.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import Any

from bench.poll_fast import fast_path_cpu
from bench.poll_sql import Plan, explain_users, time_polls
from bench.run import percentile
from bench.scratch import scratch_database
from bench.server import ROOT, free_port, serving

USERS = int(os.environ.get("BENCH_POLL_USERS", "200"))
TASKS = int(os.environ.get("BENCH_POLL_TASKS", "100000"))
PACED_SECONDS = float(os.environ.get("BENCH_POLL_SECONDS", "20"))
SATURATION_SECONDS = float(os.environ.get("BENCH_POLL_SATURATION_SECONDS", "10"))
WORKERS = int(os.environ.get("BENCH_POLL_WORKERS", "4"))
#: gunicorn's worker class and threads per worker: "gthread" (connections kept alive
#: between a tab's polls: what docs/how-to/web.md recommends) or "sync" (gunicorn's
#: default: a connection per request).
WORKER_CLASS = os.environ.get("BENCH_POLL_WORKER_CLASS", "gthread")
THREADS = int(os.environ.get("BENCH_POLL_THREADS", "4"))
SAMPLES = int(os.environ.get("BENCH_POLL_SAMPLES", "500"))
POLL_PATH = "/batchtasks/api/tasks/active/"
PROGRESS_APP = "bench-poll-progress"
Row = tuple[str, str]

COLUMNS = (
    "owner_id, definition_id, queue, state, description, progress_percent, progress_message, "
    "result, error_type, error_message, worker, lease_expires_at, cancel_requested, "
    "created_at, queued_at, started_at, finished_at, updated_at, priority, fairness_key, "
    "fair_round, attempt, error_traceback, worker_instance, lost_runs, republish_count, "
    "finalize_state, finalize_attempts, finalize_error, concurrency_key, rate_key, "
    "pending_parents, on_parent_failure, child_count"
)
FINAL = ["succeeded", "failed", "cancelled", "skipped"]

# Stands in for the workers' progress reports (one fenced UPDATE per report in the real
# thing): each second a fifth of the running tasks advance, so some polls answer 200.
PROGRESS_SQL = (
    "UPDATE batchtasks_batchtask SET progress_percent = progress_percent %% 99 + 1, "
    "updated_at = now() WHERE state = 'running' AND id %% 5 = %s"
)


def configure(url: str) -> dict[str, str]:
    """Point Django (here and in gunicorn) at ``url`` and migrate; return the server env."""
    os.environ.update(
        DATABASE_URL=url,
        DJANGO_SETTINGS_MODULE="project.settings",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost,testserver",
        BATCHTASKS_REDIS_PREFIX="batchtasks-bench-poll:",
        LOG_LEVEL="WARNING",
    )
    os.environ.setdefault("DJANGO_SECRET_KEY", "benchmarks-only-not-a-secret")
    os.environ.pop("DJANGO_DEBUG", None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return dict(os.environ)


def fill(users: int, tasks: int) -> tuple[list[int], list[str]]:
    """Create the users, their sessions and the tasks; return user ids and session keys."""
    from django.contrib.auth.models import User
    from django.db import connection

    from batchtasks.services.definitions import sync_definitions

    definitions = sync_definitions()
    accounts = User.objects.bulk_create(User(username=f"poll-user-{i:03d}") for i in range(users))
    ids, rng = [user.pk for user in accounts], random.Random(7)
    # A few unfinished and lately finished tasks per user; the bulk finished 10 minutes to
    # 30 days ago, most of it owned by a few heavy users, 5 % by nobody (system tasks).
    specs: list[tuple[int | None, str]] = []
    for pk in ids:
        unfinished = rng.choices(["new", "queued", "running"], [1, 1, 3], k=rng.randint(1, 3))
        specs += [(pk, kind) for kind in unfinished + ["recent"] * rng.randint(0, 4)]
    for _ in range(tasks - len(specs)):
        owner = None if rng.random() < 0.05 else ids[int(len(ids) * rng.random() ** 2)]
        specs.append((owner, "old"))
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        now = cursor.fetchone()[0]
        with cursor.copy(f"COPY batchtasks_batchtask ({COLUMNS}) FROM STDIN") as copy:
            for owner, kind in specs:
                copy.write_row(task_row(rng, owner, kind, rng.choice(definitions), now))
        cursor.execute("VACUUM ANALYZE")
    return ids, [login(user) for user in accounts]


def task_row(
    rng: random.Random, owner: int | None, kind: str, definition: Any, now: Any
) -> tuple[Any, ...]:
    """The COPY row of one task: ``kind`` is its state, or "old"/"recent" for finished ones."""
    at = now - timedelta(seconds=rng.random() * 600)
    state, started, finished = kind, (at if kind == "running" else None), None
    if kind in ("old", "recent"):
        state = rng.choices(FINAL, [90, 7, 2, 1])[0]
        ago = 600 + rng.random() * 30 * 86400 if kind == "old" else rng.random() * 480
        finished = now - timedelta(seconds=ago)
        started = finished - timedelta(seconds=1 + rng.random() * 120)
    queued = None if state == "new" else started - timedelta(seconds=0.5) if started else at
    created = queued - timedelta(seconds=0.1) if queued else at
    progress = 100 if state == "succeeded" else rng.randrange(100) if state == "running" else 0
    failed = state == "failed"
    return (
        owner, definition.pk, definition.queue, state, f"Users report {rng.randrange(9999)}",
        progress, f"{progress} of 100 steps" if state == "running" else "",
        json.dumps({"rows": rng.randrange(5000)}) if state == "succeeded" else None,
        "ValueError" if failed else "", "no such user: 42" if failed else "",
        "celery@bench" if started else "",
        now + timedelta(seconds=30) if state == "running" else None,
        state == "cancelled", created, queued, started, finished,
        finished or started or queued or created, 0, "", 0, 1, "", "", 0, 0, "", 0, "",
        "", "", 0, "skip", 0,
    )  # fmt: skip


def login(user: Any) -> str:
    """A signed-in session of ``user``, as django.contrib.auth.login leaves it."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    session = import_module(settings.SESSION_ENGINE).SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return str(session.session_key)


@contextmanager
def progress_reports(url: str) -> Iterator[None]:
    """Running tasks report progress in the background while the block runs."""
    import psycopg

    stop, failed = threading.Event(), []

    def report() -> None:
        try:
            with psycopg.connect(url, autocommit=True, application_name=PROGRESS_APP) as conn:
                for tick in itertools.count():
                    conn.execute(PROGRESS_SQL, [tick % 5])
                    if stop.wait(1.0):
                        return
        except Exception as exc:
            failed.append(exc)

    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    if failed:
        raise RuntimeError("the progress reports failed") from failed[0]


# --- the server and the load --------------------------------------------------------------
@contextmanager
def gunicorn(env: dict[str, str]) -> Iterator[tuple[int, Any]]:
    """gunicorn with ``WORKER_CLASS`` workers on a free port of 127.0.0.1; yields (port,
    master)."""
    import psutil

    port = free_port()
    argv = ["gunicorn", "project.wsgi", "-w", str(WORKERS), "-b", f"127.0.0.1:{port}"]
    argv += ["--worker-class", WORKER_CLASS]
    if WORKER_CLASS == "gthread":
        argv += ["--threads", str(THREADS), "--keep-alive", "5"]
    with serving([*argv, "--log-level", "warning"], port, env) as server:
        yield port, psutil.Process(server.pid)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by the processes ``pids`` (gone ones count 0)."""
    import psutil

    total = 0.0
    for pid in pids:
        with suppress(psutil.NoSuchProcess):
            total += sum(psutil.Process(pid).cpu_times()[:2])
    return total


def server_pids(master: Any) -> tuple[list[int], list[int]]:
    """The gunicorn workers and their PostgreSQL backends (every other one on the db)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND application_name <> %s",
            [PROGRESS_APP],
        )
        return [p.pid for p in master.children()], [row[0] for row in cursor.fetchall()]


def run_phase(
    port: int, sessions: list[str], master: Any, seconds: float, paced: bool
) -> dict[str, Any]:
    """One load phase in a load-generator process; adds server and database CPU per poll."""
    config = {
        "port": port,
        "path": POLL_PATH,
        "sessions": sessions,
        "paced": paced,
        "seconds": seconds,
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.poll_load"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdin and child.stdout
    try:
        child.stdin.write(json.dumps(config) + "\n")
        child.stdin.flush()
        if child.stdout.readline().strip() != "warm":
            raise RuntimeError(f"the load generator failed (exit {child.wait()})")
        workers, backends = server_pids(master)
        before = cpu_seconds(workers), cpu_seconds(backends)
        child.stdin.write("go\n")
        child.stdin.flush()
        result: dict[str, Any] = json.loads(child.stdout.readline())
        after = cpu_seconds(workers), cpu_seconds(backends)
    finally:
        child.kill()
        child.wait()
    polls = max(1, result["requests"])
    result["gunicorn_cpu"] = (after[0] - before[0]) * 1000 / polls
    result["postgresql_cpu"] = (after[1] - before[1]) * 1000 / polls
    return result


# --- the report -----------------------------------------------------------------------------
UNITS = {
    "throughput": "req/s", "p50": "ms", "p95": "ms", "p99": "ms", "not_modified": "% of answers",
    "gunicorn_cpu": "ms CPU per poll", "postgresql_cpu": "ms CPU per poll",
    "load_generator_cpu": "ms CPU per poll",
}  # fmt: skip


def phase_rows(key: str, label: str, r: dict[str, Any], lines: list[str]) -> list[Row]:
    """The rows of one load phase; appends its metric lines to ``lines``."""
    ok = r["statuses"].get("200", 0) + r["statuses"].get("304", 0)
    r["not_modified"] = r["statuses"].get("304", 0) * 100 / max(1, ok)
    r["errors"] = sum(r["statuses"].values()) - ok
    lines += [f"poll.{key}.{name}: {r[name]:.2f} {unit}" for name, unit in UNITS.items()]
    lines.append(f"poll.{key}.errors: {r['errors']} responses (statuses {dict(r['statuses'])})")
    return [
        (f"{label}: throughput; latency p50 / p95 / p99",
         f"{r['throughput']:,.0f} req/s; {r['p50']:.1f} / {r['p95']:.1f} / {r['p99']:.1f} ms"),
        (f"{label}: 304 share; errors; CPU per poll, gunicorn / PostgreSQL / load generator",
         f"{r['not_modified']:.0f} %; {r['errors']}; {r['gunicorn_cpu']:.2f} / "
         f"{r['postgresql_cpu']:.2f} / {r['load_generator_cpu']:.2f} ms"),
    ]  # fmt: skip


def quiet_rows(r: dict[str, Any], lines: list[str]) -> list[Row]:
    """The rows of the phase in which nothing changes: the cost of one 304 answer."""
    label = f"nothing changes, {USERS} users polling back to back, {SATURATION_SECONDS:g} s"
    rows = phase_rows("unchanged", label, r, lines)
    lines.append(f"poll.unchanged.gunicorn_cpu_per_304: {r['gunicorn_cpu']:.2f} ms")
    share = f"{r['not_modified']:.0f} % of answers 304"
    rows.append((f"gunicorn CPU per 304 answer, {WORKER_CLASS} workers (target <= 1.0 ms)",
                 f"{r['gunicorn_cpu']:.2f} ms ({share})"))  # fmt: skip
    return rows


def fast_path_rows(ms: float, statuses: Counter[str], lines: list[str]) -> list[Row]:
    """The row of the fast path's own CPU per 304, in this process (bench/poll_fast.py)."""
    lines.append(f"poll.in_process.fast_path_cpu_per_304: {ms:.3f} ms")
    polls = sum(statuses.values())
    return [(f"… of which the fast path's own, in process ({polls:,} polls, time.process_time)",
             f"{ms:.3f} ms ({statuses['304']:,} 304s)")]  # fmt: skip


def in_process_rows(samples: dict[str, list[float]], lines: list[str]) -> list[Row]:
    """The rows of the in-process timings; appends their metric lines to ``lines``."""
    mean = {kind: statistics.mean(values) for kind, values in samples.items()}
    p95 = {kind: percentile(values, 95) for kind, values in samples.items()}
    for kind in sorted(samples):
        unit = "queries per poll" if kind == "queries" else "ms per poll"
        name = kind.replace(" ", "_")
        lines += [f"poll.in_process.{name}_mean: {mean[kind]:.3f} {unit}"]
        lines += [f"poll.in_process.{name}_p95: {p95[kind]:.3f} {unit}"]
    parts = [mean.get(kind, 0.0) for kind in ("session", "user", "permissions", "tasks", "token")]
    return [
        (f"in-process, {SAMPLES} polls: SQL per poll ({mean['queries']:.0f} queries), mean / p95",
         f"{mean['all SQL']:.2f} / {p95['all SQL']:.2f} ms"),
        ("… of which session / user / permissions / tasks / token (all in one) query, mean",
         "{:.2f} / {:.2f} / {:.2f} / {:.2f} / {:.2f} ms".format(*parts)),
        ("… the rest (Python, test client included), mean for 200 / 304",
         f"{mean.get('python 200', 0):.2f} / {mean.get('python 304', 0):.2f} ms"),
    ]  # fmt: skip


def plan_rows(plans: list[Plan], lines: list[str]) -> list[Row]:
    """The rows of the EXPLAIN ANALYZE runs; appends their metrics and plans to ``lines``."""
    rows = []
    for label, tasks, ms, plan in plans:
        used = any("batchtask_owner_active_idx" in line for line in plan)
        index = "on" if used else "NOT on"
        rows.append((f"tasks query of the {label} user ({tasks:,} tasks), EXPLAIN ANALYZE",
                     f"{ms:.3f} ms, {index} batchtask_owner_active_idx"))  # fmt: skip
        lines.append(f"poll.explain.{label}_user.execution_time: {ms:.3f} ms")
        lines += [f"    {line}" for line in plan]
    return rows or [("tasks query, EXPLAIN ANALYZE", "no tasks query seen")]


def measure() -> tuple[list[Row], list[str]]:
    """Set up, load, time and tear down; the table rows and the metric lines."""
    started = time.perf_counter()
    with scratch_database("poll") as url:
        env = configure(url)
        ids, sessions = fill(USERS, TASKS)
        lines = [f"poll.setup_time: {time.perf_counter() - started:.1f} s"]
        print(f"loading gunicorn -w {WORKERS} ({WORKER_CLASS}) ...", file=sys.stderr, flush=True)
        with gunicorn(env) as (port, master):
            # Nothing changes: every answer after each user's first is a 304.
            quiet = run_phase(port, sessions, master, SATURATION_SECONDS, paced=False)
            with progress_reports(url):
                paced = run_phase(port, sessions, master, PACED_SECONDS, paced=True)
                saturated = run_phase(port, sessions, master, SATURATION_SECONDS, paced=False)
        fast = fast_path_cpu(sessions)
        samples, timer = time_polls(POLL_PATH, sessions, SAMPLES)
        plans = explain_users(ids, timer)
    bounded = f"bounded, {USERS} users each polling 1 s after its last answer, {PACED_SECONDS:g} s"
    rows = phase_rows("bounded", bounded, paced, lines)
    closed = f"saturation, {USERS} users polling back to back, {SATURATION_SECONDS:g} s"
    rows += phase_rows("saturation", closed, saturated, lines)
    rows += quiet_rows(quiet, lines) + fast_path_rows(*fast, lines)
    rows += in_process_rows(samples, lines) + plan_rows(plans, lines)
    lines.append(f"poll.total_time: {time.perf_counter() - started:.1f} s")
    return rows, lines


def main() -> None:
    """Run the benchmark and print its table and metric lines."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still drop the database
    rows, lines = measure()
    print(f"\n| {POLL_PATH}, {TASKS:,} tasks, {USERS} users | value |\n|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\n" + "\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
