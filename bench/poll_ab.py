"""Two checkouts' unchanged polls measured in alternation: a fair before/after on a busy
machine, where one run after the other measures the load as much as the change.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/batchtasks \\
        .venv/bin/python -m bench.poll_ab /path/to/before-checkout [gunicorn|in-process]

Each checkout (the one named and this one) gets a process of its own in its directory,
running its own code, with a scratch database filled as bench/poll.py fills it; in ``gunicorn`` mode
(the default) each serves it with gunicorn as bench/poll.py does (``BENCH_POLL_*``
variables apply). Then ``BENCH_AB_ROUNDS`` (6) rounds: each checkout in turn, the order
swapped every round, runs one quiet phase of ``BENCH_AB_SECONDS`` (5) seconds (gunicorn
CPU per 304) or ``BENCH_AB_POLLS`` (1,000) polls in process (CPU per 304). Prints the
medians and the median of the per-round ratios (after / before).
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROUNDS = int(os.environ.get("BENCH_AB_ROUNDS", "6"))
SECONDS = float(os.environ.get("BENCH_AB_SECONDS", "5"))
POLLS = int(os.environ.get("BENCH_AB_POLLS", "1000"))
HERE = Path(__file__).resolve().parent.parent


def side(mode: str) -> None:
    """One checkout's process (run from its directory): set up, then measure on request."""
    sys.path.insert(0, os.getcwd())  # the checkout's bench, project and batchtasks
    from bench.poll import TASKS, USERS, configure, fill, gunicorn, run_phase
    from bench.scratch import scratch_database

    # This checkout's in-process measurement, on the other checkout's code (its own
    # project.wsgi), which may be older than bench/poll_fast.py.
    spec = importlib.util.spec_from_file_location("poll_fast_ab", HERE / "bench" / "poll_fast.py")
    assert spec and spec.loader
    poll_fast = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(poll_fast)
    fast_path_cpu = poll_fast.fast_path_cpu

    with scratch_database("pollab") as url:
        env = configure(url)
        _, sessions = fill(USERS, TASKS)
        if mode == "in-process":
            fast_path_cpu(sessions, POLLS)  # warm
            print("ready", flush=True)
            for _ in sys.stdin:
                print(json.dumps({"cpu": fast_path_cpu(sessions, POLLS)[0]}), flush=True)
            return
        with gunicorn(env) as (port, master):
            run_phase(port, sessions, master, 2, paced=False)  # warm
            print("ready", flush=True)
            for _ in sys.stdin:
                r = run_phase(port, sessions, master, SECONDS, paced=False)
                out = {"cpu": r["gunicorn_cpu"], "pg": r["postgresql_cpu"], "rate": r["throughput"]}
                print(json.dumps(out), flush=True)


def compare(before: str, mode: str) -> None:
    """Alternate the two checkouts' measurements and print the comparison."""
    argv = [sys.executable, __file__, "--side", mode]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    procs = {
        name: subprocess.Popen(argv, cwd=root, **pipes)
        for name, root in (("before", before), ("after", str(HERE)))
    }
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in procs}
    try:
        for proc in procs.values():
            assert proc.stdout and proc.stdout.readline().strip() == "ready"
        for i in range(ROUNDS):
            for name in ("before", "after") if i % 2 == 0 else ("after", "before"):
                proc = procs[name]
                assert proc.stdin and proc.stdout
                proc.stdin.write("go\n")
                proc.stdin.flush()
                results[name].append(json.loads(proc.stdout.readline()))
    finally:
        for proc in procs.values():
            if proc.stdin:
                proc.stdin.close()
            proc.wait()
    what = "gunicorn CPU per 304" if mode == "gunicorn" else "in-process CPU per 304"
    for name, rows in results.items():
        cpu = [r["cpu"] for r in rows]
        extra = "".join(
            f"; {key} median {statistics.median(r[key] for r in rows):.2f}"
            for key in ("pg", "rate")
            if key in rows[0]
        )
        runs = " ".join(f"{x:.3f}" for x in cpu)
        print(f"{name}: {what} median {statistics.median(cpu):.3f} ms ({runs}){extra}")
    ratios = [a["cpu"] / b["cpu"] for b, a in zip(results["before"], results["after"], strict=True)]
    print(f"after / before, median of the rounds: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    if sys.argv[1] == "--side":
        side(sys.argv[2])
    else:
        compare(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "gunicorn")
