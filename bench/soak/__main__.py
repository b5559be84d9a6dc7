"""The soak driver (``make soak``; ``.ci/docker-soak`` starts the stack it needs): for
``--minutes``, a submitter and a simulated API user keep a mixed load going (limited
and unlimited types, packed tiny tasks, timed, process-isolated and executor types,
finalizers and webhooks, unique keys with supersede, cancels and retries, delayed
tasks, a schedule, dependencies) while the fault picker fires the chaos scenarios at
random; then it stops the load, waits for every task to be final, judges the ledgers
(``judge.py``) and writes the report (``report.py``). Exits 1 if an invariant broke.

    python -m bench.soak --ledger     (first, before the workers start)
    python -m bench.soak [--minutes 30] [--seed N] [--scenarios a,b]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import astuple
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench.chaos.ledger import RUNS_SQL, Final, runs_of
from bench.chaos.scenarios import SCENARIOS, Settings
from bench.chaos.stack import Stack

from .judge import Counts, Hook, Ledgers, Submission, judge

BACKLOG = 30
PROGRESS = 15.0  # seconds between progress lines


#: Scenarios the picker leaves out unless named: four bring tasks of the chaos test's own
#: types, which the soak's workers do not consume (a load, not a fault; oom_kill's
#: chaos.hog and finalizer_faults' chaos.hooked are what their faults strike, so they
#: would strike nothing here), and a read-only failover leaves the web process's
#: sessions read-only (only workers drop them: its answers would fail outside the
#: fault's window). full_disk is fired where PostgreSQL's data is on a disk of its own
#: (``CHAOS_PG_DISK``, which .ci/docker-soak mounts where it can).
NOT_FAULTS = (
    "priority_starvation",
    "retry_storm",
    "read_only_failover",
    "oom_kill",
    "finalizer_faults",
    *(() if os.environ.get("CHAOS_PG_DISK") else ("full_disk",)),
)


def main() -> int:
    args = _arguments()
    names = (
        args.scenarios.split(",")
        if args.scenarios
        else [n for n in SCENARIOS if n not in NOT_FAULTS]
    )
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        sys.exit(f"Unknown scenarios {unknown!r}; they are {', '.join(SCENARIOS)}.")
    import django

    django.setup()
    from batchtasks.core.finalizers import webhook_of
    from plugins.chaos import SCHEMA as LEDGER
    from plugins.soak import LIMITS, TYPES
    from plugins.soak_receiver import SCHEMA

    from .faults import Picker
    from .load import Submitter, User

    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    stack = Stack()
    if args.ledger:
        # Before the workers start: the schedule ticks as soon as they run.
        stack.create_ledger()
        stack.db().execute(SCHEMA)
        stack.db().execute("TRUNCATE soak.webhooks")
        return 0
    stack.db().execute(LEDGER)  # kept as they are, if --ledger made them
    stack.db().execute(SCHEMA)
    settings = Settings(
        lease=float(os.environ["BATCHTASKS_LEASE_SECONDS"]),
        sweep=float(os.environ["BATCHTASKS_SWEEP_INTERVAL"]),
        broker_pause=10.0 if args.minutes <= 5 else 20.0,
    )
    user = User(
        os.environ["SOAK_API_URL"], os.environ["SOAK_API_TOKEN"], rng=random.Random(seed + 1)
    )
    _wait_for_api(user)
    seconds = args.minutes * 60
    tail = max(2 * settings.settle, 20.0)
    picker = Picker(
        settings,
        names=names,
        gap=(settings.settle, 3 * settings.settle),
        stop_by=time.monotonic() + seconds - tail,
        rng=random.Random(seed + 2),
    )
    submitter = Submitter(backlog=BACKLOG, rng=random.Random(seed + 3))
    print(
        f"[soak] {args.minutes:g} min, seed {seed}, scenarios {', '.join(names)}; lease "
        f"{settings.lease:g} s, sweep {settings.sweep:g} s",
        flush=True,
    )
    start = stack.now()
    began = time.monotonic()
    for thread in (submitter, user, picker):
        thread.start()
    while (left := seconds - (time.monotonic() - began)) > 0:
        time.sleep(min(PROGRESS, left))
        _progress(stack, began, submitter, user, picker)
    submitter.stop()
    user.stop()
    picker.join()
    load_end = stack.now()
    last_fault = max([f.end for f in picker.timeline] + [load_end])
    deadline = last_fault + timedelta(seconds=args.bound)
    submissions = [*submitter.submissions, *user.submissions]
    submissions += _scheduled(start, load_end)
    _drain(stack, submissions, user, deadline)
    end_bound = stack.now()
    ids = [s.task_id for s in submissions]
    runs = runs_of(stack.query(RUNS_SQL, (ids,)), stack.local_ends())
    finals = [Final(*f) for f in stack.query(_FINALS, (ids,))]
    hooks = [Hook(*h) for h in stack.query(_HOOKS)]
    counts = judge(
        Ledgers(
            submissions=submissions,
            runs=runs,
            finals=finals,
            hooks=hooks,
            requests=user.requests,
            timeline=picker.timeline,
            faults=picker.faults,
            end_bound=end_bound,
            settle=settings.settle,
            limits=LIMITS,
            webhook_types=frozenset(t for t in TYPES if webhook_of(t)),
            exited=[w for w in stack.workers if not stack.running(w)],
        )
    )
    folder = Path(args.out) / datetime.now().strftime("%Y%m%d-%H%M%S")
    from .report import write

    write(
        folder,
        counts,
        picker.timeline,
        finals,
        start=start,
        end=end_bound,
        settings={
            "minutes": args.minutes,
            "seed": seed,
            "scenarios": names,
            "lease s": settings.lease,
            "sweep s": settings.sweep,
            "bound after the last fault s": args.bound,
            "drained s after the load": round((end_bound - load_end).total_seconds(), 1),
            "submit errors": dict(submitter.errors),
        },
    )
    _keep(folder, submissions, runs, finals, hooks, user.requests)
    _summary(counts, folder)
    return 1 if counts.breaks else 0


_FINALS = (
    "SELECT task_id, attempt, state, at, host FROM chaos.finals WHERE task_id = ANY(%s) ORDER BY at"
)
_HOOKS = "SELECT task_id, attempt, state, signed, at FROM soak.webhooks ORDER BY at"


def _keep(folder: Path, *rows: Sequence[Any]) -> None:
    """The ledgers as read, in ledger.json next to the report, to look into afterwards."""
    names = ("submissions", "runs", "finals", "hooks", "requests")
    data = {
        name: [list(astuple(r)) for r in rows_] for name, rows_ in zip(names, rows, strict=True)
    }
    (folder / "ledger.json").write_text(json.dumps(data, default=str) + "\n")


def _wait_for_api(user: Any, patience: float = 120.0) -> None:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        status, _ = user.call("GET", "/types/")
        if status == 200:
            user.requests.clear()
            return
        time.sleep(1)
    sys.exit("The web API did not answer 200 within two minutes.")


def _scheduled(start: datetime, end: datetime) -> list[Submission]:
    """The tasks the schedule ``soak-tick`` submitted while the load ran."""
    from batchtasks.models import BatchTask

    rows = BatchTask.objects.filter(
        definition__name="soak.scheduled", created_at__gte=start, created_at__lt=end
    ).values_list("pk", "created_at")
    return [Submission(int(pk), "soak.scheduled", at, kind="schedule") for pk, at in rows]


def _drain(stack: Stack, submissions: list[Submission], user: Any, deadline: datetime) -> None:
    """Wait until every task has an outcome (after its last retry), or the deadline."""
    since = {r.task_id: r.sent for r in user.requests if r.action == "retry" and r.status < 300}
    ids = [s.task_id for s in submissions]
    while stack.now() < deadline:
        finals = stack.query(
            "SELECT task_id, max(at) FROM chaos.finals WHERE task_id = ANY(%s) GROUP BY 1", (ids,)
        )
        last = dict(finals)
        missing = [t for t in ids if t not in last or (t in since and last[t] < since[t])]
        if not missing:
            return
        time.sleep(1)


def _progress(stack: Stack, began: float, submitter: Any, user: Any, picker: Any) -> None:
    """One line; and the cheap continuous check: no outcome finalized twice so far."""
    runs, finals, twice = stack.query(
        "SELECT (SELECT count(*) FROM chaos.runs), (SELECT count(*) FROM chaos.finals), "
        "(SELECT count(*) FROM (SELECT 1 FROM chaos.finals GROUP BY task_id, attempt "
        "HAVING count(*) > 1) AS t)"
    )[0]
    bad = sum(1 for r in user.requests if r.status >= 500 or r.status == 0)
    print(
        f"[soak {time.monotonic() - began:4.0f}s] submitted {len(submitter.submissions)} + api "
        f"{len(user.submissions)}, runs {runs}, finals {finals}, finalized twice {twice}, "
        f"faults {len(picker.timeline)}, api 5xx/none {bad}",
        flush=True,
    )


def _summary(counts: Counts, folder: Path) -> None:
    data = counts.as_dict()
    for key in ("submitted", "by_type", "outcomes", "runs", "faults", "cancels_waiting",
                "cancels_running", "retries", "superseded", "delayed", "children",
                "scheduled", "webhook_calls", "api_requests", "api_5xx_in_faults"):  # fmt: skip
        print(f"[soak] {key}: {data[key]}")
    for key in Counts.INVARIANTS:
        print(f"[soak] {key}: {data[key]}")
    verdict = "every invariant held" if not counts.breaks else f"BROKEN {counts.breaks}"
    print(f"[soak] {verdict}; report in {folder}", flush=True)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the load runs")
    parser.add_argument("--seed", type=int, default=None, help="the random choices' seed")
    parser.add_argument(
        "--scenarios", default="", help="comma-separated, of: " + ", ".join(SCENARIOS)
    )
    parser.add_argument(
        "--bound",
        type=float,
        default=90.0,
        help="seconds after the last fault (or the load's end) by which every task is final",
    )
    parser.add_argument(
        "--ledger",
        action="store_true",
        help="only make the ledger's tables, empty (before the workers start), and exit",
    )
    parser.add_argument("--out", default=".run/soak", help="where the report's folder goes")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
