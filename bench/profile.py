"""``make profile``: py-spy flame graphs of a benchmark worker running the throughput load.

Starts a worker as ``make bench`` does (one worker ``-c 2`` on ``batch.examples.noop``),
attaches ``py-spy record`` to its main process and to each pool process, submits
``BENCH_TASKS`` (10,000) no-op tasks with ``submit_many`` and stops the recorders when the
last is done; twice (see ``MODES``). Writes one SVG per process and pass to
``.run/profile/`` and prints the paths, each with the functions with the most samples of
their own (not counting their callees).

``PROFILE_ONE_TASK=1`` forces one task per message, as the throughput step's row with
small tasks per message off does (``BATCHTASKS_MESSAGE_BATCH_SECONDS=0``, for the worker
and for this process's dispatch alike); ``PROFILE_MODES`` picks passes (``active,gil``).

``PROFILE_RATE`` (default 250) sets the samples per second; ``PROFILE_ARGS`` adds
py-spy options (``--nonblocking`` samples without pausing the process: less overhead,
sometimes torn stacks; ``--native`` adds C frames; ``--idle`` keeps waiting threads).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from html import unescape
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".run" / "profile"
RATE = os.environ.get("PROFILE_RATE", "250")
EXTRA = shlex.split(os.environ.get("PROFILE_ARGS", ""))
TOP = int(os.environ.get("PROFILE_TOP", "12"))
N_TASKS = int(os.environ.get("BENCH_TASKS", "10000"))
ONE_TASK = os.environ.get("PROFILE_ONE_TASK", "") not in ("", "0")


def py_spy() -> str:
    path = Path(sys.executable).parent / "py-spy"
    return str(path) if path.exists() else "py-spy"


#: Two passes of the same load: every stack py-spy takes for not idle (it counts some
#: waits in C: a woken thread not yet scheduled, psycopg waiting for PostgreSQL), then
#: only stacks holding the GIL, i.e. Python running (C code that releases it is missed).
MODES = [("active", []), ("gil", ["--gil"])]
CHOSEN = os.environ.get("PROFILE_MODES", "active,gil").split(",")
DESCRIBE = {
    "active": "stacks py-spy takes for not idle (includes some waits: psycopg, locks, epoll)",
    "gil": "stacks holding the GIL only (Python running; waits and GIL-free C left out)",
}


def record(pid: int, svg: Path, flags: list[str], threads: bool) -> subprocess.Popen[bytes]:
    """``py-spy record`` of one process until SIGINT; its messages go next to the SVG."""
    command = [py_spy(), "record", "--pid", str(pid), "--rate", RATE, "--output", str(svg)]
    command += ["--format", "flamegraph", *(["--threads"] if threads else []), *flags]
    log = svg.with_suffix(".log").open("wb")
    try:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


FRAME = re.compile(r'<title>(.*?) \(([\d,]+) samples?, [\d.]+%\)</title><rect [^>]*?y="([\d.]+)"')
GEOMETRY = re.compile(r'fg:x="(\d+)" fg:w="(\d+)"')


def self_samples(svg: Path) -> tuple[Counter[str], Counter[str], int]:
    """Samples per function spent in the function itself, and per function of
    batchtasks/ with its callees, read back from the SVG (inferno's frames carry ``fg:x``
    / ``fg:w``, their sample offset and count); and the total."""
    frames = []  # (depth y, x, width, name)
    for part in svg.read_text(errors="replace").split("<g>")[1:]:
        title, geometry = FRAME.search(part), GEOMETRY.search(part)
        if title and geometry:
            name = unescape(title.group(1))
            frames.append((float(title.group(3)), int(geometry[1]), int(geometry[2]), name))
    if not frames:
        return Counter(), Counter(), 0
    by_row: dict[float, list[tuple[int, int]]] = {}
    for y, x, w, _ in frames:
        by_row.setdefault(y, []).append((x, w))
    rows = sorted(by_row)
    # A callee sits one row further from the root ("all"): below it in py-spy's icicle
    # graphs, above it in a classic flame graph.
    if any(name == "all" and y == rows[0] for y, _, _, name in frames):
        above = {rows[i]: rows[i + 1] for i in range(len(rows) - 1)}
    else:
        above = {rows[i]: rows[i - 1] for i in range(1, len(rows))}
    own: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for y, x, w, name in frames:
        if name == "all":
            total = w
            continue
        children = sum(cw for cx, cw in by_row.get(above.get(y, -1.0), []) if x <= cx < x + w)
        own[name] += w - children
        if "batchtasks/" in name:
            ours[name] += w  # (a recursive function would count twice)
    return own, ours, total


def main() -> None:
    import psutil

    from bench.cpu import celery_main
    from bench.run import (
        NO_MESSAGE_BATCH,
        OUR_TRANSPORT,
        all_done,
        bench_settings,
        configure,
        reset,
        wait_until,
    )
    from bench.run import worker as bench_worker

    configure()
    from batchtasks import BatchTask

    OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + ("-one" if ONE_TASK else "")
    settings = NO_MESSAGE_BATCH if ONE_TASK else {}
    reset()
    with (
        bench_settings(settings),
        bench_worker(["batch.examples.noop"], env={**OUR_TRANSPORT, **settings}) as w,
    ):
        BatchTask.submit("examples.noop")  # the definition, warm connections
        wait_until(all_done, 60)
        parent = celery_main(w.pid)

        def pool_processes() -> list[psutil.Process]:
            return [p for p in parent.children() if p.status() != psutil.STATUS_ZOMBIE]

        # On a loaded machine the worker answers pings before its pool is up.
        wait_until(lambda: len(pool_processes()) >= 2, 60)
        pool = pool_processes()
        targets = [("parent", parent.pid, True)]
        targets += [(f"pool{i + 1}", p.pid, False) for i, p in enumerate(pool)]
        for mode, flags in MODES:
            if mode not in CHOSEN:
                continue
            reset()
            recorders = []
            for label, pid, threads in targets:
                svg = OUT / f"{stamp}-{label}-{pid}-{mode}.svg"
                recorders.append((svg, record(pid, svg, [*flags, *EXTRA], threads)))
            time.sleep(1.0)  # let py-spy attach
            for svg, proc in recorders:
                if proc.poll() is not None:
                    log = svg.with_suffix(".log").read_text(errors="replace")
                    raise RuntimeError(f"py-spy exited at once:\n{log}")
            start = time.perf_counter()
            BatchTask.submit_many("examples.noop", [{}] * N_TASKS)
            done = wait_until(all_done, timeout=600, interval=0.1)
            for _, proc in recorders:
                proc.send_signal(signal.SIGINT)
            for _, proc in recorders:
                proc.wait(120)
            report(mode, recorders, done - start)
    reset()


def report(mode: str, recorders: list[tuple[Path, subprocess.Popen[bytes]]], took: float) -> None:
    print(
        f"\n== {mode}: {DESCRIBE[mode]}\n{N_TASKS:,} no-op tasks in {took:.1f} s "
        f"({N_TASKS / took:,.0f} tasks/s while sampled at {RATE} Hz)"
    )
    for svg, _ in recorders:
        if not svg.exists():
            print(f"\n{svg}: not written; see {svg.with_suffix('.log')}")
            continue
        own, ours, total = self_samples(svg)
        print(f"\n{svg.relative_to(ROOT)}  ({total:,} samples)\n  self:")
        for name, n in own.most_common(TOP):
            print(f"  {100 * n / max(total, 1):5.1f}%  {name}")
        print("  batchtasks/ functions with their callees:")
        for name, n in ours.most_common(TOP // 2):
            print(f"  {100 * n / max(total, 1):5.1f}%  {name}")


if __name__ == "__main__":
    main()
