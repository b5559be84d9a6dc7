"""What the chaos ledger (plugins/chaos.py) says about one scenario: the runs and final
outcomes of the tasks it submitted, judged against the faults the driver caused.

A run's *executed* time is from its start to its end, less the time its container was
paused (a frozen process executes nothing); a run that never ended executed until its
container was killed, its process was seen gone or started another run (a pool process
runs one at a time), or else until the end bound (it may still be going).
Two executed spans of one task that meet are an overlap; more executed spans at one
instant than the type's limit is a limit break, but for what a run executes after a
pause longer than its lease (its remnant: the attempt was lost and given to another
worker meanwhile; its writes are for the fence to refuse), which is measured apart.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

Span = tuple[datetime, datetime]
#: (host, pid) -> the start times of its runs, in order
Starts = dict[tuple[str, int], list[datetime]]


@dataclass(frozen=True)
class Run:
    """One row of ``chaos.runs``."""

    task_id: int
    attempt: int
    host: str
    pid: int
    started: datetime
    ended: datetime | None
    outcome: str | None = None


#: The ledger's runs, with their tokens: ``runs_of(rows, stack.local_ends())``.
RUNS_SQL = (
    "SELECT token::text, task_id, attempt, host, pid, started_at, ended_at, outcome "
    "FROM chaos.runs WHERE task_id = ANY(%s) ORDER BY started_at"
)


def runs_of(
    rows: Iterable[Sequence[Any]], local_ends: dict[str, tuple[str, datetime]]
) -> list[Run]:
    """``Run``s of ``RUNS_SQL``'s rows. A run whose end the ledger never heard of (its
    worker, cut off PostgreSQL, stopped it and was killed before the ledger answered)
    takes the end its host noted (``plugins.chaos.note_end_locally``)."""
    runs = []
    for token, *row in rows:
        run = Run(*row)
        if run.ended is None and token in local_ends:
            outcome, ended = local_ends[token]
            run = Run(run.task_id, run.attempt, run.host, run.pid, run.started, ended, outcome)
        runs.append(run)
    return runs


@dataclass(frozen=True)
class Final:
    """One row of ``chaos.finals``: the finalizer saw the task final in ``state``."""

    task_id: int
    attempt: int
    state: str
    at: datetime
    #: The container that called it ("" where not read).
    host: str = ""


@dataclass
class Faults:
    """What the driver did to the containers, in the database's time."""

    #: host -> the spans it was paused
    paused: dict[str, list[Span]] = field(default_factory=lambda: defaultdict(list))
    #: host -> the times it was killed
    killed: dict[str, list[datetime]] = field(default_factory=lambda: defaultdict(list))
    #: (host, pid) -> when the process was first seen gone (a run stopped mid-body)
    gone: dict[tuple[str, int], datetime] = field(default_factory=dict)
    #: host -> the spans a fault kept it from its work while it ran on (cut off a
    #: server, its database read-only): it must start runs again after each
    hindered: dict[str, list[Span]] = field(default_factory=lambda: defaultdict(list))
    #: What the scenario measured besides the ledger, a sentence each
    notes: list[str] = field(default_factory=list)
    #: Tasks the scenario submitted itself, judged with the load's
    submitted: list[int] = field(default_factory=list)
    #: Those of them of another type than the load's, whose runs the load's limit does
    #: not count
    other_type: set[int] = field(default_factory=set)
    #: The fault struck finalizers mid-call: an outcome's finalizer may be called again
    #: (side effects are at least once), which is a repeat, not a second completion
    finalizers_struck: bool = False
    #: What a scenario's own check found broken, a sentence each (fails the scenario)
    broken: list[str] = field(default_factory=list)
    #: What a scenario hands its own check (``scenarios.CHECKS``)
    context: dict[str, Any] = field(default_factory=dict)


def executed(
    run: Run, faults: Faults, end_bound: datetime, starts: Starts | None = None
) -> list[Span]:
    """The spans in which ``run`` executed (see the module's docstring); ``starts`` are
    the start times of every run by process (``starts_by_process``)."""
    end = run.ended
    if end is None:
        ends = [k for k in faults.killed.get(run.host, []) if k >= run.started]
        gone = faults.gone.get((run.host, run.pid))
        ends += [gone] if gone is not None and gone >= run.started else []
        # A process runs one task at a time: the next run it started ended this one.
        later = (starts or {}).get((run.host, run.pid), [])
        ends += [t for t in later if t > run.started][:1]
        end = min(ends) if ends else end_bound
    spans = [(run.started, end)]
    for pause_start, pause_end in sorted(faults.paused.get(run.host, [])):
        spans = [piece for span in spans for piece in _minus(span, (pause_start, pause_end))]
    return [s for s in spans if s[1] > s[0]]


def starts_by_process(runs: Iterable[Run]) -> Starts:
    """When each process started each of its runs."""
    starts: Starts = defaultdict(list)
    for run in runs:
        starts[(run.host, run.pid)].append(run.started)
    for times in starts.values():
        times.sort()
    return starts


def _minus(span: Span, cut: Span) -> list[Span]:
    if cut[1] <= span[0] or cut[0] >= span[1]:
        return [span]
    return [s for s in ((span[0], cut[0]), (cut[1], span[1])) if s[1] > s[0]]


def live_and_remnant(
    run: Run, faults: Faults, end_bound: datetime, starts: Starts | None = None
) -> tuple[list[Span], list[Span]]:
    """``run``'s executed spans split where a pause froze it: the driver's pauses are
    longer than a lease, so what it executes after the thaw belongs to an attempt already
    lost and given to another worker (a remnant the fence must keep from writing)."""
    spans = executed(run, faults, end_bound, starts)
    return spans[:1], spans[1:]


def overlapping_tasks(runs: Sequence[Run], faults: Faults, end_bound: datetime) -> set[int]:
    """The tasks two of whose runs executed at the same time."""
    starts = starts_by_process(runs)
    by_task: dict[int, list[Span]] = defaultdict(list)
    for run in runs:
        by_task[run.task_id].extend(executed(run, faults, end_bound, starts))
    found = set()
    for task_id, spans in by_task.items():
        spans.sort()
        reach = spans[0][1] if spans else None
        for start, end in spans[1:]:
            if reach is not None and start < reach:
                found.add(task_id)
            reach = max(reach, end) if reach is not None else end
    return found


def limit_breaks(runs: Sequence[Run], faults: Faults, end_bound: datetime, limit: int) -> int:
    """How many times the live runs went above ``limit`` at once (remnants apart)."""
    starts = starts_by_process(runs)
    events: list[tuple[datetime, int]] = []
    for run in runs:
        for start, end in live_and_remnant(run, faults, end_bound, starts)[0]:
            events += [(start, 1), (end, -1)]
    events.sort()  # at one instant an end (-1) sorts before a start: touching is not meeting
    breaks = level = 0
    for _, step in events:
        level += step
        if step > 0 and level == limit + 1:
            breaks += 1
    return breaks


@dataclass(frozen=True)
class Row:
    """One scenario's line of the table."""

    scenario: str
    submitted: int
    succeeded: int
    lost: int
    twice: int
    overlaps: int
    limit_breaks: int
    recovery: float | None
    after_percent: float | None
    #: The longest a frozen run went on after its thaw before it stopped (seconds).
    remnant: float = 0.0
    #: Completions a second during the fault, as % of before it.
    during_percent: float | None = None
    #: The longest a hindered worker took to start a run after its fault (seconds).
    rejoin: float | None = None
    #: Hindered workers that started no run after their fault by the end bound.
    stuck: int = 0
    #: Finalizer calls beyond the first of one outcome (task and attempt).
    repeats: int = 0
    #: What the scenario's own check found broken.
    broken: int = 0

    @property
    def invariants_hold(self) -> bool:
        """No task lost, none completed twice, none beside itself, the limit kept, no
        worker stuck after its fault, nothing the scenario checks itself broken."""
        return not (
            self.lost
            or self.twice
            or self.overlaps
            or self.limit_breaks
            or self.stuck
            or self.broken
        )


@dataclass(frozen=True)
class Window:
    """The times of one scenario (database clock)."""

    before: Span
    fault: Span
    after: Span
    end_bound: datetime


def judge(
    scenario: str,
    *,
    submitted: Sequence[int],
    runs: Sequence[Run],
    finals: Sequence[Final],
    faults: Faults,
    window: Window,
    limit: int,
) -> Row:
    """The row of a scenario from its ledger."""
    ids = set(submitted)
    runs = [r for r in runs if r.task_id in ids]
    finals = [f for f in finals if f.task_id in ids and f.at <= window.end_bound]
    per_task: dict[int, list[Final]] = defaultdict(list)
    for f in finals:
        per_task[f.task_id].append(f)
    after_fault = [f.at for f in finals if f.at >= window.fault[1]]
    return Row(
        scenario=scenario,
        submitted=len(ids),
        succeeded=sum(1 for fs in per_task.values() if any(f.state == "succeeded" for f in fs)),
        lost=len(ids - per_task.keys()),
        twice=sum(1 for fs in per_task.values() if _completions(fs, faults) > 1),
        overlaps=len(overlapping_tasks(runs, faults, window.end_bound)),
        limit_breaks=limit_breaks(
            [r for r in runs if r.task_id not in faults.other_type], faults, window.end_bound, limit
        ),
        recovery=(min(after_fault) - window.fault[1]).total_seconds() if after_fault else None,
        after_percent=_ratio(finals, window.before, window.after),
        during_percent=_ratio(finals, window.before, window.fault),
        remnant=longest_remnant(runs, faults, window.end_bound),
        **rejoins(runs, faults, window.end_bound),
        repeats=sum(len(fs) - len({f.attempt for f in fs}) for fs in per_task.values()),
        broken=len(faults.broken),
    )


def _completions(finals: Sequence[Final], faults: Faults) -> int:
    """How many times a task was completed: each finalizer call, or each outcome (task
    and attempt) finalized where the fault struck the finalizers and a call may repeat."""
    return len({f.attempt for f in finals}) if faults.finalizers_struck else len(finals)


def rejoins(runs: Sequence[Run], faults: Faults, end_bound: datetime) -> dict[str, Any]:
    """``rejoin`` and ``stuck`` of a row: how long after each fault a hindered worker
    started a run again (the longest), and how many never did by ``end_bound``."""
    waits: list[float] = []
    stuck = 0
    for host, spans in faults.hindered.items():
        for _, fault_end in spans:
            later = [r.started for r in runs if r.host == host and fault_end <= r.started]
            later = [t for t in later if t <= end_bound]
            if later:
                waits.append((min(later) - fault_end).total_seconds())
            else:
                stuck += 1
    return {"rejoin": max(waits) if waits else None, "stuck": stuck}


def longest_remnant(runs: Sequence[Run], faults: Faults, end_bound: datetime) -> float:
    """The longest a run executed after a thaw (``live_and_remnant``), in seconds."""
    starts = starts_by_process(runs)
    return max(
        (
            sum((end - start).total_seconds() for start, end in remnant)
            for run in runs
            if (remnant := live_and_remnant(run, faults, end_bound, starts)[1])
        ),
        default=0.0,
    )


def rate(finals: Iterable[Final], span: Span) -> float:
    """Final outcomes a second within ``span``."""
    seconds = (span[1] - span[0]).total_seconds()
    return sum(1 for f in finals if span[0] <= f.at < span[1]) / seconds if seconds > 0 else 0.0


def _ratio(finals: Sequence[Final], before: Span, after: Span) -> float | None:
    base = rate(finals, before)
    return 100.0 * rate(finals, after) / base if base else None
