"""The chaos driver (``make chaos``; ``.ci/docker-chaos`` starts the stack it needs):
under a steady load, cause each scenario's fault and print a row per scenario from the
ledger. Exits 1 if a task was lost, completed twice, ran beside itself or the
concurrency limit broke.

    python -m bench.chaos [--quick] [--scenarios crash_recovery,broker_pause] [--storm-tasks N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from .ledger import RUNS_SQL, Faults, Final, Row, Window, judge, runs_of
from .scenarios import AFTERWARDS, CHECKS, QUICK, SCENARIOS, Settings
from .stack import Stack

#: Seconds each task sleeps; tasks kept submitted and unfinished.
SECONDS = 0.4
BACKLOG = 12


def main() -> int:
    args = _arguments()
    names = (
        args.scenarios.split(",") if args.scenarios else list(QUICK if args.quick else SCENARIOS)
    )
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        sys.exit(f"Unknown scenarios {unknown!r}; they are {', '.join(SCENARIOS)}.")
    import django

    django.setup()
    from plugins.chaos import MAX_CONCURRENCY

    stack = Stack()
    stack.create_ledger()
    settings = Settings(
        lease=float(os.environ["BATCHTASKS_LEASE_SECONDS"]),
        sweep=float(os.environ["BATCHTASKS_SWEEP_INTERVAL"]),
        broker_pause=10.0 if args.quick else 20.0,
        # The 3 minutes unless CHAOS_LONG_SECONDS says otherwise (trials).
        long_session=float(os.environ.get("CHAOS_LONG_SECONDS", "180")),
        storm_tasks=args.storm_tasks,
        aging=float(os.environ.get("BATCHTASKS_PRIORITY_AGING") or 0),
    )
    window = 8.0 if args.quick else 15.0
    _print_header(settings, window, MAX_CONCURRENCY)
    rows = [run_scenario(stack, n, settings, window, MAX_CONCURRENCY) for n in names]
    return 0 if all(r.invariants_hold for r in rows) else 1


def run_scenario(stack: Stack, name: str, s: Settings, window: float, limit: int) -> Row:
    """Load, measure a window, cause the fault, let it settle, measure again, drain."""
    from .load import Load

    load = Load(stack, backlog=BACKLOG, seconds=SECONDS)
    load.start()
    time.sleep(5)  # the load reaches its pace
    before_start = stack.now()
    time.sleep(window)
    faults = Faults()
    fault = SCENARIOS[name](stack, faults, s)
    after_start = fault[1] + timedelta(seconds=s.settle + 2)
    _sleep_until(stack, after_start + timedelta(seconds=window))
    submitted = load.stop() + faults.submitted
    drain_bound = stack.now() + timedelta(seconds=max(60.0, 3 * s.settle))
    while stack.now() < drain_bound and _unfinished(stack, submitted):
        time.sleep(0.5)
    if name in CHECKS:
        CHECKS[name](stack, faults, s)
    # A worker the fault stopped is started again by it: one not running exited by itself.
    faults.broken += [f"{w} exited by itself" for w in stack.workers if not stack.running(w)]
    end_bound = stack.now()
    if name in AFTERWARDS:
        AFTERWARDS[name](stack)
    runs = runs_of(stack.query(RUNS_SQL, (submitted,)), stack.local_ends())
    finals = stack.query(
        "SELECT task_id, attempt, state, at FROM chaos.finals WHERE task_id = ANY(%s) ORDER BY at",
        (submitted,),
    )
    row = judge(
        name,
        submitted=submitted,
        runs=runs,
        finals=[Final(*f) for f in finals],
        faults=faults,
        window=Window(
            before=(before_start, fault[0]),
            fault=fault,
            after=(after_start, after_start + timedelta(seconds=window)),
            end_bound=end_bound,
        ),
        limit=limit,
    )
    _print_row(row, s, faults.notes + [f"BROKEN: {b}" for b in faults.broken])
    _keep(name, runs, finals, faults, fault)
    return row


def _keep(name: str, runs: list[Any], finals: list[Any], faults: Faults, fault: Any) -> None:
    """The scenario's ledger and faults, as JSON in .run/chaos/, to look into afterwards."""
    folder = Path(".run/chaos")
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "fault": fault,
        "paused": faults.paused,
        "killed": faults.killed,
        "gone": [[host, pid, at] for (host, pid), at in faults.gone.items()],
        "hindered": faults.hindered,
        "notes": faults.notes,
        "broken": faults.broken,
        "runs": runs,
        "finals": finals,
    }
    (folder / f"{name}.json").write_text(json.dumps(data, default=str, indent=0))


def _unfinished(stack: Stack, ids: list[int]) -> bool:
    done = stack.query(
        "SELECT count(DISTINCT task_id) FROM chaos.finals WHERE task_id = ANY(%s)", (ids,)
    )[0][0]
    return int(done) < len(set(ids))


def _sleep_until(stack: Stack, when: datetime) -> None:
    left = (when - stack.now()).total_seconds()
    if left > 0:
        time.sleep(left)


COLUMNS = (
    ("scenario", 22), ("submitted", 9), ("succeeded", 9), ("lost", 4), ("twice", 5),
    ("overlaps", 8), ("limit breaks", 12), ("recovery s", 10), ("after %", 7), ("remnant s", 9),
    ("rejoin s", 8), ("during %", 8),
)  # fmt: skip


def _print_header(s: Settings, window: float, limit: int) -> None:
    print(
        f"chaos.work: {SECONDS} s a task, {BACKLOG} kept unfinished, max_concurrency {limit}; "
        f"lease {s.lease:g} s, sweep {s.sweep:g} s; throughput windows {window:g} s"
        + (f"; priority aging {s.aging:g} s a point" if s.aging else "")
    )
    print(" | ".join(name.rjust(width) for name, width in COLUMNS))


def _print_row(row: Row, s: Settings, notes: list[str]) -> None:
    recovery = "-" if row.recovery is None else f"{row.recovery:.1f}"
    if row.recovery is not None and row.recovery > s.settle:
        recovery += "!"
    after = "-" if row.after_percent is None else f"{row.after_percent:.0f}"
    if row.after_percent is not None and row.after_percent < 95:
        after += "!"
    rejoin = "-" if row.rejoin is None else f"{row.rejoin:.1f}"
    if row.stuck:
        rejoin = f"{row.stuck} stuck!"
    values = (
        row.scenario, row.submitted, row.succeeded, row.lost, row.twice, row.overlaps,
        row.limit_breaks, recovery, after, f"{row.remnant:.2f}", rejoin,
        "-" if row.during_percent is None else f"{row.during_percent:.0f}",
    )  # fmt: skip
    print(" | ".join(str(v).rjust(w) for v, (_, w) in zip(values, COLUMNS, strict=True)))
    if row.repeats:
        notes = [*notes, f"{row.repeats} finalizer calls repeated an outcome's"]
    for note in notes:
        print(f"    {row.scenario}: {note}")
    sys.stdout.flush()


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument(
        "--scenarios", default="", help="comma-separated, of: " + ", ".join(SCENARIOS)
    )
    parser.add_argument(
        "--storm-tasks",
        type=int,
        default=10_000,
        help="retry_storm's tasks that fail twice (the issue's 10,000 unless told; trials)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
