"""What the soak's ledgers say (``judge``): the chaos ledger's runs and finalizer calls
(``chaos.runs``, ``chaos.finals``), the receiver's webhook calls (``soak.webhooks``) and
the driver's own record of what it submitted and asked of the API, against the faults
the picker fired. No database and no containers here: the driver reads, this judges
(tested in tests/test_soak.py).

A task's *outcome* is one ``(task, attempt)`` its finalizer saw final; a retry makes a
new one. The invariants (``Counts.breaks``), each counted:

- **lost**: a task with no outcome by the drain's end (or none after its last retry);
- **twice**: an outcome finalized more than once, or a task that succeeded twice; but a
  finalizer called again after the container that called it was killed (before it could
  record its run: side effects are at least once, the record exactly once) is a
  **finalizer repeat**, counted apart and not a break;
- **overlaps**, **limit breaks**: as the chaos test counts them (``bench/chaos/ledger.py``);
- **webhooks missing / repeated**: an outcome of a webhook type not called exactly once;
  **webhooks stray**: a call for no outcome the finalizer saw; **unsigned** ones;
- **cancelled waiting, started**: a task the API answered ``cancelled`` (it was waiting)
  that ran before it was retried; **skipped, started**: a task skipped (superseded, or a
  parent that did not succeed) that had run for that outcome;
- **early starts**: a delayed task run before its ``run_after``;
- **dependency breaks**: a child run before each of its parents' runs had ended done
  (their finalizers may record later: the child may start as soon as the last parent's
  final write commits);
- **API 5xx outside faults**: a 5xx answer, or no answer, to a request sent outside every
  fault window (a fault's span and ``settle`` seconds after it).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from bench.chaos.ledger import Faults, Final, Run, limit_breaks, overlapping_tasks


@dataclass(frozen=True)
class Submission:
    """One task the driver submitted (or found its schedule submitted)."""

    task_id: int
    type: str
    at: datetime
    #: ``run_after`` of a delayed task
    due: datetime | None = None
    #: the tasks it depends on
    parents: tuple[int, ...] = ()
    #: what the load meant by it ("limited", "supersede", "then", "api", ...)
    kind: str = ""


@dataclass(frozen=True)
class Hook:
    """One webhook call the receiver recorded."""

    task_id: int | None
    attempt: int | None
    state: str | None
    signed: bool
    at: datetime


@dataclass(frozen=True)
class Request:
    """One API request of the simulated user: its method, path, status (0: no answer),
    when it was sent and answered, and for a cancel or retry the task, and the state and
    attempt answered."""

    method: str
    path: str
    status: int
    sent: datetime
    answered: datetime
    task_id: int | None = None
    action: str = ""
    state: str = ""
    attempt: int | None = None


@dataclass(frozen=True)
class Fault:
    """One fault the picker fired: its scenario, span, and the error if it failed."""

    name: str
    start: datetime
    end: datetime
    error: str = ""


@dataclass
class Counts:
    """The soak's figures; ``breaks`` are the invariants broken."""

    submitted: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    runs: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    fault_errors: int = 0
    cancels_waiting: int = 0
    cancels_running: int = 0
    retries: int = 0
    superseded: int = 0
    delayed: int = 0
    children: int = 0
    scheduled: int = 0
    webhook_calls: int = 0
    api_requests: int = 0
    api_5xx_in_faults: int = 0
    #: outcomes whose finalizer ran again because its container was killed after a call
    finalizer_repeats: int = 0
    lost: int = 0
    twice: int = 0
    overlaps: int = 0
    limit_breaks: int = 0
    webhooks_missing: int = 0
    webhooks_repeated: int = 0
    webhooks_stray: int = 0
    webhooks_unsigned: int = 0
    cancelled_waiting_started: int = 0
    skipped_started: int = 0
    early_starts: int = 0
    dependency_breaks: int = 0
    api_5xx_outside_faults: int = 0
    #: worker containers that were not running at the end (none is stopped for good
    #: by a fault: one that exited did so by itself)
    workers_exited: int = 0
    #: the ids behind each broken invariant (a few), to look into
    examples: dict[str, list[Any]] = field(default_factory=dict)

    INVARIANTS = (
        "lost", "twice", "overlaps", "limit_breaks", "webhooks_missing", "webhooks_repeated",
        "webhooks_stray", "webhooks_unsigned", "cancelled_waiting_started", "skipped_started",
        "early_starts", "dependency_breaks", "api_5xx_outside_faults", "fault_errors",
        "workers_exited",
    )  # fmt: skip

    @property
    def breaks(self) -> dict[str, int]:
        """The invariants broken, with their counts (a failed fault is one too: the soak
        did not do what it says)."""
        return {name: getattr(self, name) for name in self.INVARIANTS if getattr(self, name)}

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["breaks"] = self.breaks
        return data


@dataclass(frozen=True)
class Ledgers:
    """Everything the judge reads."""

    submissions: Sequence[Submission]
    runs: Sequence[Run]
    finals: Sequence[Final]
    hooks: Sequence[Hook]
    requests: Sequence[Request]
    timeline: Sequence[Fault]
    faults: Faults
    #: when the drain ended: what is not final by then is lost
    end_bound: datetime
    #: seconds after a fault in which a 5xx is still the fault's
    settle: float
    limits: dict[str, int]
    webhook_types: frozenset[str]
    #: the worker containers found not running at the end
    exited: Sequence[str] = ()


def judge(ledgers: Ledgers) -> Counts:
    """The counts of one soak."""
    led = ledgers
    counts = Counts()
    tasks: dict[int, Submission] = {}
    for s in led.submissions:  # a keyed submit may return a task submitted before: the first
        tasks.setdefault(s.task_id, s)
    runs = [r for r in led.runs if r.task_id in tasks]
    finals = [f for f in led.finals if f.task_id in tasks and f.at <= led.end_bound]
    retried = _retried_at(led.requests)
    counts.submitted = len(tasks)
    counts.by_type = dict(Counter(s.type for s in tasks.values()))
    counts.runs = len(runs)
    counts.faults = dict(Counter(f.name for f in led.timeline))
    counts.fault_errors = sum(1 for f in led.timeline if f.error)
    counts.superseded = sum(1 for s in tasks.values() if s.kind == "supersede")
    counts.delayed = sum(1 for s in tasks.values() if s.due is not None)
    counts.children = sum(1 for s in tasks.values() if s.parents)
    counts.scheduled = sum(1 for s in tasks.values() if s.kind == "schedule")
    counts.retries = sum(len(times) for times in retried.values())
    counts.webhook_calls = len(led.hooks)
    counts.api_requests = len(led.requests)

    per_outcome: dict[tuple[int, int], list[Final]] = defaultdict(list)
    per_task: dict[int, list[Final]] = defaultdict(list)
    for f in finals:
        per_outcome[(f.task_id, f.attempt)].append(f)
        per_task[f.task_id].append(f)
    counts.outcomes = dict(Counter(fs[0].state for fs in per_outcome.values()))

    lost = [
        t for t in tasks if not _final_after(per_task[t], max(retried.get(t, []), default=None))
    ]
    _note(counts, "lost", lost)
    repeated = {key for key, fs in per_outcome.items() if _killed_after_each(fs, led.faults)}
    counts.finalizer_repeats = len(repeated)
    twice = [key for key, fs in per_outcome.items() if len(fs) > 1 and key not in repeated]
    twice += [
        (t, "succeeded twice")
        for t, fs in per_task.items()
        if len({f.attempt for f in fs if f.state == "succeeded"}) > 1
    ]
    _note(counts, "twice", twice)
    _note(counts, "overlaps", sorted(overlapping_tasks(runs, led.faults, led.end_bound)))
    breaks = []
    for type_name, limit in led.limits.items():
        typed = [r for r in runs if tasks[r.task_id].type == type_name]
        breaks += [type_name] * limit_breaks(typed, led.faults, led.end_bound, limit)
    _note(counts, "limit_breaks", breaks)
    _judge_webhooks(counts, led, tasks, per_outcome, repeated)
    _judge_cancels(counts, led, runs, retried)
    _judge_skips(counts, runs, per_task, retried)
    _judge_times(counts, tasks, runs)
    _judge_api(counts, led)
    _note(counts, "workers_exited", list(led.exited))
    return counts


def _killed_after_each(finals: Sequence[Final], faults: Faults) -> bool:
    """Whether an outcome called its finalizer more than once only because each call but
    the last was cut short: its container was killed between it and the next call."""
    ordered = sorted(finals, key=lambda f: f.at)
    return len(ordered) > 1 and all(
        any(a.at <= kill <= b.at for kill in faults.killed.get(a.host, []))
        for a, b in pairwise(ordered)
    )


def _retried_at(requests: Sequence[Request]) -> dict[int, list[datetime]]:
    """When each task was retried through the API (answered 2xx)."""
    retried: dict[int, list[datetime]] = defaultdict(list)
    for r in requests:
        if r.action == "retry" and 200 <= r.status < 300 and r.task_id is not None:
            retried[r.task_id].append(r.sent)
    return retried


def _final_after(finals: Sequence[Final], since: datetime | None) -> bool:
    return any(since is None or f.at >= since for f in finals)


def _note(counts: Counts, name: str, found: Sequence[Any]) -> None:
    setattr(counts, name, len(found))
    if found:
        counts.examples[name] = list(found[:10])


def _judge_webhooks(
    counts: Counts,
    led: Ledgers,
    tasks: dict[int, Submission],
    per_outcome: dict[tuple[int, int], list[Final]],
    repeated: set[tuple[int, int]],
) -> None:
    calls = Counter(
        (h.task_id, h.attempt) for h in led.hooks if h.task_id in tasks and h.attempt is not None
    )
    wanted = [key for key in per_outcome if tasks[key[0]].type in led.webhook_types]
    _note(counts, "webhooks_missing", [key for key in wanted if not calls.get(key)])
    _note(
        counts,
        "webhooks_repeated",  # a finalizer repeat posts its webhook again too
        [key for key in wanted if calls.get(key, 0) > 1 and key not in repeated],
    )
    _note(counts, "webhooks_stray", [key for key in calls if key not in per_outcome])
    _note(counts, "webhooks_unsigned", [(h.task_id, h.attempt) for h in led.hooks if not h.signed])


def _judge_cancels(
    counts: Counts, led: Ledgers, runs: Sequence[Run], retried: dict[int, list[datetime]]
) -> None:
    """A task the API cancelled while it waited (answered ``cancelled`` at once) must not
    start until it is retried: no run of the attempt cancelled (or an earlier one) after
    the cancel. Where the answer names no attempt, no run before a retry answered 2xx (a
    retry applied whose answer a fault swallowed then reads as a break)."""
    starts: dict[int, list[tuple[datetime, int]]] = defaultdict(list)
    for run in runs:
        starts[run.task_id].append((run.started, run.attempt))
    found = []
    for r in led.requests:
        if r.action != "cancel" or not 200 <= r.status < 300 or r.task_id is None:
            continue
        if r.state != "cancelled":
            counts.cancels_running += 1
            continue
        counts.cancels_waiting += 1
        after = [(s, attempt) for s, attempt in starts[r.task_id] if s >= r.sent]
        if r.attempt is not None:
            started = any(attempt <= r.attempt for _, attempt in after)
        else:
            until = min((t for t in retried.get(r.task_id, []) if t > r.sent), default=None)
            started = any(until is None or s < until for s, _ in after)
        if started:
            found.append(r.task_id)
    _note(counts, "cancelled_waiting_started", found)


def _judge_skips(
    counts: Counts,
    runs: Sequence[Run],
    per_task: dict[int, list[Final]],
    retried: dict[int, list[datetime]],
) -> None:
    """A skipped outcome (superseded, or a parent that did not succeed) never ran."""
    attempts = {(r.task_id, r.attempt) for r in runs}
    found = [
        f.task_id
        for fs in per_task.values()
        for f in fs
        if f.state == "skipped" and f.task_id not in retried and (f.task_id, f.attempt) in attempts
    ]
    _note(counts, "skipped_started", found)


def _judge_times(counts: Counts, tasks: dict[int, Submission], runs: Sequence[Run]) -> None:
    """Delayed tasks start at ``run_after`` or later; children after their parents."""
    first: dict[int, datetime] = {}
    for run in runs:
        first[run.task_id] = min(first.get(run.task_id, run.started), run.started)
    early = [
        t
        for t, s in tasks.items()
        if s.due is not None and t in first and first[t] < s.due - timedelta(milliseconds=10)
    ]
    _note(counts, "early_starts", early)
    done: dict[int, list[datetime]] = defaultdict(list)
    for run in runs:
        if run.outcome == "done" and run.ended is not None:
            done[run.task_id].append(run.ended)
    broken = []
    for t, s in tasks.items():
        if s.parents and t in first:
            ends = [max(done[p], default=None) for p in s.parents]
            if any(end is None or first[t] < end for end in ends):
                broken.append(t)
    _note(counts, "dependency_breaks", broken)


def in_fault(when: datetime, timeline: Sequence[Fault], settle: float) -> bool:
    """Whether ``when`` is within a fault or ``settle`` seconds after one."""
    grace = timedelta(seconds=settle)
    return any(f.start <= when <= f.end + grace for f in timeline)


def _judge_api(counts: Counts, led: Ledgers) -> None:
    """A 5xx or no answer is the fault's if the request was sent, or answered, within a
    fault window; else it breaks the invariant."""
    bad = [r for r in led.requests if r.status >= 500 or r.status == 0]
    during = [
        r
        for r in bad
        if in_fault(r.sent, led.timeline, led.settle)
        or in_fault(r.answered, led.timeline, led.settle)
    ]
    counts.api_5xx_in_faults = len(during)
    outside = [
        f"{r.method} {r.path} {r.status} at {r.sent.isoformat()}" for r in bad if r not in during
    ]
    _note(counts, "api_5xx_outside_faults", outside)


def throughput(finals: Sequence[Final], start: datetime, end: datetime, step: float) -> list[int]:
    """Final outcomes in each ``step`` seconds from ``start`` to ``end``."""
    buckets = [0] * max(1, int((end - start).total_seconds() // step) + 1)
    for f in finals:
        index = int((f.at - start).total_seconds() // step)
        if 0 <= index < len(buckets):
            buckets[index] += 1
    return buckets
