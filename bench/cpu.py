"""CPU seconds (user + system) per process group during one benchmark measurement.

``CpuMeter(worker_pid)`` samples, with psutil, the Celery worker's main process, its pool
children, PostgreSQL, redis-server and this (the submitting) process when it starts and
when it stops, and in between once a second from a thread. PostgreSQL's total is exact:
a backend that exits during the run is reaped by the postmaster, whose children's times
(``children_user`` / ``children_system``) then hold it; likewise pool children replaced
during the run count through the worker's main process. The split of PostgreSQL into the
backends connected to the benchmark's database and the rest (background processes,
other databases' backends: other benchmarks on the same server) uses
``pg_stat_activity``: the backends of the bench database, the processes of no database
(postmaster, WAL writer, checkpointer...: shared, they also serve other databases), and the
rest (other databases' backends: other benchmarks or tests on the same server; left out of
the total). A bench backend that exits mid-run counts up to its last sample and the rest
of it lands in the rest. redis-server is one process shared by every client.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

#: The groups, in the order of the table.
GROUPS = (
    ("worker", "worker main process (MainProcess)"),
    ("pool", "worker pool processes"),
    ("pg_bench", "PostgreSQL: backends of the bench database"),
    ("pg_background", "PostgreSQL: postmaster, WAL writer, checkpointer, bgwriter (shared)"),
    ("redis", "redis-server (shared with any other user)"),
    ("submitter", "submitting process (this one)"),
)

#: Not in the total: load of other users of the same server.
OTHER = "PostgreSQL backends of other databases, and any not identified"

Key = tuple[int, float]  # pid and create time: a pid reused mid-run is another process


def _seconds(proc: psutil.Process, children: bool = False) -> float:
    t = proc.cpu_times()
    if children:
        return t.children_user + t.children_system
    return t.user + t.system


def _reaped(proc: psutil.Process) -> float:
    """CPU seconds of ``proc``'s reaped children; 0 if it is gone since listed (a
    redis-server RDB fork is named as its parent and ends on its own)."""
    try:
        return _seconds(proc, children=True)
    except psutil.Error:
        return 0.0


def _key(proc: psutil.Process) -> Key:
    return (proc.pid, proc.create_time())


@dataclass
class _Snapshot:
    """CPU seconds of each process of a group, and of its reaped children."""

    own: dict[str, dict[Key, float]] = field(default_factory=dict)
    reaped: dict[str, float] = field(default_factory=dict)


def celery_main(pid: int) -> psutil.Process:
    """The celery worker's main process: ``pid`` itself (tests/workers.py starts
    ``python -m celery`` directly), or the first ``celery`` below it if ``pid`` is a
    wrapper (a shell, ``uv run``...)."""
    proc = psutil.Process(pid)
    for candidate in [proc, *proc.children(recursive=True)]:
        try:
            if "celery" in " ".join(candidate.cmdline()):
                return candidate
        except psutil.Error:
            continue
    return proc


class CpuMeter:
    """Measure the CPU of one run: ``start()``, the workload, ``stop()`` -> seconds by group."""

    def __init__(self, worker_pid: int, database: str | None = None, interval: float = 1.0):
        self.worker_pid = worker_pid
        self.database = database
        self.interval = interval
        self._start: _Snapshot | None = None
        self._last: dict[str, dict[Key, float]] = {}
        self._bench_backends: set[int] = set()
        self._background: set[int] = set()  # processes of no database (and the postmaster)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_cpu = 0.0  # the sampling thread's own CPU, taken off the submitter's
        self._conn: Any = None

    # --- the processes ---------------------------------------------------------------------
    def _celery_main(self) -> psutil.Process:
        return celery_main(self.worker_pid)

    @staticmethod
    def _by_name(name: str) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["name"]):
            if proc.info["name"] == name:
                found.append(proc)
        return found

    def _postmaster(self, procs: Iterable[psutil.Process]) -> psutil.Process | None:
        for proc in procs:
            try:
                parent = proc.parent()
            except psutil.Error:
                continue
            if parent is None or parent.name() != "postgres":
                return proc
        return None

    def _sample(self) -> _Snapshot:
        snap = _Snapshot()

        def add(group: str, procs: Iterable[psutil.Process]) -> None:
            values = snap.own.setdefault(group, {})
            for proc in procs:
                with contextlib.suppress(psutil.Error):  # gone since listed
                    values[_key(proc)] = _seconds(proc)

        main = self._celery_main()
        add("worker", [main])
        add("pool", main.children(recursive=True))
        snap.reaped["pool"] = _seconds(main, children=True)
        postgres = self._by_name("postgres")
        add("postgres", postgres)
        postmaster = self._postmaster(postgres)
        if postmaster is not None:
            self._background.add(postmaster.pid)
        snap.reaped["postgres"] = _seconds(postmaster, children=True) if postmaster else 0.0
        redis = self._by_name("redis-server")
        add("redis", redis)
        snap.reaped["redis"] = sum(_reaped(p) for p in redis)  # its RDB forks
        add("submitter", [psutil.Process(os.getpid())])
        return snap

    def _note_bench_backends(self) -> None:
        if not self.database:
            return
        import psycopg

        try:
            if self._conn is None:  # one connection (a backend of "the rest") for the run
                url = os.environ["DATABASE_URL"].split("?")[0].rsplit("/", 1)[0] + "/postgres"
                self._conn = psycopg.connect(url, autocommit=True)
            rows = self._conn.execute("SELECT pid, datname FROM pg_stat_activity").fetchall()
        except psycopg.Error:
            return
        self._bench_backends.update(pid for pid, db in rows if db == self.database)
        self._background.update(pid for pid, db in rows if db is None)

    def _remember(self, snap: _Snapshot) -> None:
        for group, values in snap.own.items():
            self._last.setdefault(group, {}).update(values)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._remember(self._sample())
            self._note_bench_backends()
            self._thread_cpu = time.thread_time()

    # --- the interface -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread_cpu = 0.0
        self._note_bench_backends()
        self._start = self._sample()
        self._remember(self._start)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="cpu-meter", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        """CPU seconds of each group since ``start()`` (keys: ``GROUPS``' first items)."""
        end = self._sample()
        self._stop.set()
        assert self._thread is not None and self._start is not None
        self._thread.join()
        self._note_bench_backends()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._remember(end)
        start = self._start

        def delta(group: str, keys: Iterable[Key] | None = None) -> float:
            """Live at the end: end - start (0 if new); gone: its last sample - start."""
            before, last = start.own.get(group, {}), self._last.get(group, {})
            chosen = last.keys() if keys is None else keys
            return sum(last[k] - before.get(k, 0.0) for k in chosen if k in last)

        def exact(group: str) -> float:
            """Live processes' change plus what their parent reaped since the start."""
            now, before = end.own.get(group, {}), start.own.get(group, {})
            return (
                sum(now.values())
                - sum(before.values())
                + end.reaped.get(group, 0.0)
                - start.reaped.get(group, 0.0)
            )

        seen = self._last.get("postgres", {})
        pg_total = exact("postgres")
        pg_bench = delta("postgres", [k for k in seen if k[0] in self._bench_backends])
        pg_background = delta("postgres", [k for k in seen if k[0] in self._background])
        return {
            "worker": delta("worker"),
            "pool": exact("pool"),
            "pg_bench": pg_bench,
            "pg_background": pg_background,
            "pg_other": pg_total - pg_bench - pg_background,
            "redis": exact("redis"),
            "submitter": delta("submitter") - self._thread_cpu,
        }


def add(into: dict[str, float], more: dict[str, float]) -> dict[str, float]:
    """Sum two measurements group by group."""
    return {k: into.get(k, 0.0) + more.get(k, 0.0) for k in {*into, *more}}


def table(columns: list[tuple[str, dict[str, float], int]], title: str) -> list[str]:
    """A Markdown table of CPU milliseconds per task of each group: one column per
    ``(heading, seconds by group, tasks)``, then the first minus the last."""
    first, last = columns[0][0], columns[-1][0]
    heads = " | ".join(head for head, _, _ in columns)
    lines = [
        "",
        f"| {title} | {heads} | {first} - {last} |",
        "|---|" + "---|" * (len(columns) + 1),
    ]

    def row(label: str, keys: list[str]) -> str:
        ms = [sum(used.get(k, 0.0) for k in keys) * 1000 / n for _, used, n in columns]
        cells = " | ".join(f"{v:.3f} ms" for v in ms)
        return f"| {label} | {cells} | {ms[0] - ms[-1]:+.3f} ms |"

    for key, label in GROUPS:
        lines.append(row(label, [key]))
    lines.append(row("**total** (the rows above)", [k for k, _ in GROUPS]))
    lines.append(row(f"not counted: {OTHER}", ["pg_other"]))
    return lines
