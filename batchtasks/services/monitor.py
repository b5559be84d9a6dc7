"""What the staff monitor shows: workers, the load of every queue and type, running
tasks, recent failures and the last hour's finishes by type and minute.

A page view costs the same fixed handful of queries however many rows there are
(aggregates grouped by type, and two short lists with a limit). Every age and window is
measured from one reading of the database's clock, so hosts whose clocks disagree
cannot make a heartbeat look late or a window slide.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from itertools import chain
from typing import Any

from django.db import router
from django.db.models import Count, Exists, Min, OuterRef, Q, QuerySet
from django.db.models.functions import Coalesce, Left, TruncMinute
from django.utils.translation import gettext as _

from ..core.conf import get_settings
from ..core.states import FINAL_STATES, IN_FLIGHT_STATES, TaskState
from ..db.sql import database_now
from ..models import (
    BatchQueue,
    BatchTask,
    BatchTaskDefinition,
    BatchTaskDependency,
    BatchWorker,
    WorkerState,
)
from ..models.queries import owner_names
from .schedule_rows import ScheduleLine, schedule_lines

HOUR = timedelta(hours=1)
RECENT = timedelta(minutes=5)
RUNNING_SHOWN = 50
#: Parents named per running task (the admin lists them all).
PARENTS_SHOWN = 5
FAILURES_SHOWN = 20
SCHEDULES_SHOWN = 50
EXCERPT_CHARS = 200


def duration_text(seconds: float | None) -> str:
    """Seconds as a short reading: "7 s", "4 min 05 s", "2 h 03 min"; "-" for none."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return _("%(s)d s") % {"s": whole}
    if whole < 3600:
        return _("%(m)d min %(s)02d s") % {"m": whole // 60, "s": whole % 60}
    return _("%(h)d h %(m)02d min") % {"h": whole // 3600, "m": whole % 3600 // 60}


@dataclass(frozen=True)
class WorkerStatus:
    """One boot of a worker as its last heartbeat described it."""

    id: int
    name: str
    host: str
    pid: int
    #: A ``WorkerState``; an online row whose heartbeat is overdue reads as offline.
    state: str
    heartbeat_age: float
    tasks_in_hand: int
    concurrency: int
    cpu_percent: float | None
    memory_bytes: int | None

    @property
    def state_label(self) -> str:
        """The state in words."""
        return str(WorkerState(self.state).label)

    @property
    def heartbeat_text(self) -> str:
        """Time since the last heartbeat, in words."""
        return duration_text(self.heartbeat_age)


@dataclass(frozen=True)
class Load:
    """Tasks of a type (or a whole queue) by where they are; the windows end now."""

    running: int = 0
    queued: int = 0
    #: Waiting for dispatch (state new), ``delayed`` of them not due yet.
    waiting: int = 0
    delayed: int = 0
    #: Waiting for their parents (``depends_on``, state blocked): not due, not counted.
    blocked: int = 0
    #: Seconds the longest-waiting due task has waited (``None``: nothing waits).
    oldest_wait: float | None = None
    #: Ended in any way (succeeded, failed, cancelled, skipped); ``failed_*`` of them failed.
    finished_recent: int = 0
    failed_recent: int = 0
    finished_hour: int = 0
    failed_hour: int = 0

    @property
    def in_flight(self) -> int:
        """Queued or running: the tasks that count against a limit."""
        return self.queued + self.running

    @property
    def oldest_wait_text(self) -> str:
        """The longest wait, in words."""
        return duration_text(self.oldest_wait)

    def __add__(self, other: Load) -> Load:
        summed = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in fields(self)
            if f.name != "oldest_wait"
        }
        waits = [w for w in (self.oldest_wait, other.oldest_wait) if w is not None]
        return Load(**summed, oldest_wait=max(waits, default=None))


@dataclass(frozen=True)
class TypeLoad:
    """A task type in its queue: its limit and its load."""

    id: int
    name: str
    max_concurrency: int | None
    enabled: bool
    load: Load


@dataclass(frozen=True)
class QueueLoad:
    """A queue, its limit, and its types with their loads."""

    name: str
    max_concurrency: int | None
    types: tuple[TypeLoad, ...]

    @property
    def load(self) -> Load:
        """The load of all its types together."""
        return sum((t.load for t in self.types), Load())


@dataclass(frozen=True)
class RunningTask:
    """A task running now, with its last reported progress."""

    id: int
    type_name: str
    description: str
    owner_name: str
    progress_percent: int
    progress_message: str
    worker: str
    running_for: float | None
    cancel_requested: bool
    #: The tasks it waited for (``depends_on``), the first ``PARENTS_SHOWN`` of them.
    parents: tuple[int, ...] = ()
    #: How many tasks depend on it (they wait, ``blocked``, while it runs).
    children: int = 0

    @property
    def parents_text(self) -> str:
        """``#12, #13`` (and a count of the rest)."""
        shown = ", ".join(f"#{pk}" for pk in self.parents[:PARENTS_SHOWN])
        more = len(self.parents) - PARENTS_SHOWN
        return f"{shown} (+{more})" if more > 0 else shown

    @property
    def running_for_text(self) -> str:
        """Time since it started, in words."""
        return duration_text(self.running_for)


@dataclass(frozen=True)
class Failure:
    """A task that failed lately, with the start of its error message."""

    id: int
    type_name: str
    description: str
    error_type: str
    message: str
    finished_at: datetime | None
    ago: float

    @property
    def ago_text(self) -> str:
        """Time since it failed, in words."""
        return duration_text(self.ago)


@dataclass(frozen=True)
class Finishes:
    """Tasks of one type that ended in one minute of the last hour (the ``finished_*``
    and ``failed_*`` counts of ``load``; ``*_recent``: in the last five minutes)."""

    definition_id: int
    minute: datetime
    load: Load


@dataclass(frozen=True)
class Snapshot:
    """Everything the monitor shows, as of ``now`` by the database's clock."""

    now: datetime
    workers: tuple[WorkerStatus, ...]
    queues: tuple[QueueLoad, ...]
    running: tuple[RunningTask, ...]
    failures: tuple[Failure, ...]
    #: Tasks ended in the last hour, by type and minute.
    finishes: tuple[Finishes, ...]
    #: Schedules, enabled ones first by next run (at most ``SCHEDULES_SHOWN``).
    schedules: tuple[ScheduleLine, ...] = ()

    @property
    def total(self) -> Load:
        """The load of every queue together."""
        return sum((q.load for q in self.queues), Load())

    @property
    def workers_online(self) -> int:
        """How many workers are heard from."""
        return sum(1 for w in self.workers if w.state == WorkerState.ONLINE)


def snapshot(using: str | None = None) -> Snapshot:
    """Read everything the monitor shows (ten queries, whatever the number of rows)."""
    db = using or router.db_for_read(BatchTask)
    now = database_now(db)
    finishes = finished_by_minute(now, db)
    return Snapshot(
        now=now,
        workers=workers(now, db),
        queues=queue_loads(now, db, finishes),
        running=running_tasks(now, db),
        failures=recent_failures(now, db),
        finishes=finishes,
        schedules=tuple(schedule_lines(using=db, limit=SCHEDULES_SHOWN)),
    )


def _seconds(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else max(0.0, (now - then).total_seconds())


def workers(now: datetime, using: str) -> tuple[WorkerStatus, ...]:
    """Workers online, and those stopped or lost within the last hour."""
    overdue = get_settings().LEASE_SECONDS
    rows = (
        BatchWorker.objects.using(using)
        .filter(Q(state=WorkerState.ONLINE) | Q(last_seen_at__gte=now - HOUR))
        .order_by("name", "-started_at")
        .defer("queues", "process_space", "process_started")
    )
    found = []
    for w in rows:
        age = _seconds(now, w.last_seen_at) or 0.0
        # The sweeper marks a silent worker offline only while some worker still sweeps.
        state = WorkerState.OFFLINE if w.state == WorkerState.ONLINE and age > overdue else w.state
        found.append(
            WorkerStatus(
                id=w.pk,
                name=w.name,
                host=w.host,
                pid=w.pid,
                state=state,
                heartbeat_age=age,
                tasks_in_hand=w.tasks_in_hand,
                concurrency=w.concurrency,
                cpu_percent=w.cpu_percent,
                memory_bytes=w.memory_bytes,
            )
        )
    return tuple(found)


def queue_loads(now: datetime, using: str, finishes: tuple[Finishes, ...]) -> tuple[QueueLoad, ...]:
    """Every queue with a type, each type's limit and load (five queries)."""
    ended = ((f.definition_id, f.load) for f in finishes)
    loads = _added(_in_flight(using), _waiting(now, using), _blocked(using), ended)
    limits = dict(BatchQueue.objects.using(using).values_list("name", "max_concurrency"))
    by_queue: dict[str, list[TypeLoad]] = {}
    definitions = BatchTaskDefinition.objects.using(using).order_by("queue", "name")
    for d in definitions.only("id", "name", "queue", "max_concurrency", "enabled"):
        load = loads.get(d.pk, Load())
        by_queue.setdefault(d.queue, []).append(
            TypeLoad(d.pk, d.name, d.max_concurrency, d.enabled, load)
        )
    return tuple(
        QueueLoad(name, limits.get(name), tuple(types)) for name, types in by_queue.items()
    )


def _grouped(tasks: QuerySet[BatchTask], **aggregates: Any) -> Iterator[tuple[int, Any]]:
    for row in tasks.order_by().values("definition_id").annotate(**aggregates):
        yield row.pop("definition_id"), row


def _in_flight(using: str) -> Iterator[tuple[int, Load]]:
    # The partial index on in-flight tasks serves this; finished rows are never read.
    for definition_id, row in _grouped(
        BatchTask.objects.using(using).filter(state__in=IN_FLIGHT_STATES),
        running=Count("id", filter=Q(state=TaskState.RUNNING)),
        queued=Count("id", filter=Q(state=TaskState.QUEUED)),
    ):
        yield definition_id, Load(**row)


def _waiting(now: datetime, using: str) -> Iterator[tuple[int, Load]]:
    due = Q(run_after__isnull=True) | Q(run_after__lte=now)
    for definition_id, row in _grouped(
        BatchTask.objects.using(using).filter(state=TaskState.NEW),
        waiting=Count("id"),
        delayed=Count("id", filter=Q(run_after__gt=now)),
        since=Min(Coalesce("run_after", "created_at"), filter=due),
    ):
        yield definition_id, Load(oldest_wait=_seconds(now, row.pop("since")), **row)


def _blocked(using: str) -> Iterator[tuple[int, Load]]:
    # Served by the partial index on blocked tasks.
    for definition_id, row in _grouped(
        BatchTask.objects.using(using).filter(state=TaskState.BLOCKED), blocked=Count("id")
    ):
        yield definition_id, Load(**row)


def _added(*parts: Iterable[tuple[int, Load]]) -> dict[int, Load]:
    """The loads of each type, added up."""
    totals: dict[int, Load] = {}
    for definition_id, load in chain(*parts):
        totals[definition_id] = totals.get(definition_id, Load()) + load
    return totals


def running_tasks(now: datetime, using: str) -> tuple[RunningTask, ...]:
    """The tasks running now, longest-running first (at most ``RUNNING_SHOWN``), with
    their parents (a query more only when one of them has any) and dependants."""
    shown = list(
        BatchTask.objects.using(using)
        .filter(state=TaskState.RUNNING)
        .order_by("started_at", "id")
        .annotate(linked=Exists(BatchTaskDependency.objects.filter(child_id=OuterRef("pk"))))
        .values_list(
            "id", "definition__name", "description", "owner_id", "progress_percent",
            "progress_message", "worker", "started_at", "cancel_requested", "child_count",
            "linked",
        )[:RUNNING_SHOWN]
    )  # fmt: skip
    rows = [row[:-1] for row in shown]
    parents = _parents_of([row[0] for row in shown if row[-1]], using)
    # Read apart, not joined: the users may be in another database (a task database).
    names = owner_names({row[3] for row in shown if row[3] is not None})
    return tuple(
        RunningTask(
            id=pk,
            type_name=type_name,
            description=description,
            owner_name=names.get(owner, ""),
            progress_percent=percent,
            progress_message=message,
            worker=worker,
            running_for=_seconds(now, started),
            cancel_requested=cancel,
            parents=tuple(parents.get(pk, ())),
            children=children,
        )
        for (
            pk,
            type_name,
            description,
            owner,
            percent,
            message,
            worker,
            started,
            cancel,
            children,
        ) in rows
    )


def _parents_of(ids: list[int], using: str) -> dict[int, list[int]]:
    """The parents of these tasks, in ``depends_on`` order (one query; none without ids)."""
    if not ids:
        return {}
    links = (
        BatchTaskDependency.objects.using(using)
        .filter(child_id__in=ids)
        .order_by("child_id", "position")
        .values_list("child_id", "parent_id")
    )
    parents: dict[int, list[int]] = {}
    for child, parent in links:
        parents.setdefault(child, []).append(parent)
    return parents


def recent_failures(now: datetime, using: str) -> tuple[Failure, ...]:
    """The last ``FAILURES_SHOWN`` tasks that failed, newest first."""
    rows = (
        BatchTask.objects.using(using)
        .filter(state=TaskState.FAILED)
        .order_by("-finished_at", "-id")
        .annotate(excerpt=Left("error_message", EXCERPT_CHARS + 1))
        .values_list(
            "id", "definition__name", "description", "error_type", "excerpt", "finished_at"
        )[:FAILURES_SHOWN]
    )
    failures = []
    for pk, type_name, description, error_type, excerpt, finished_at in rows:
        text = excerpt or ""
        failures.append(
            Failure(
                id=pk,
                type_name=type_name,
                description=description,
                error_type=error_type,
                message=text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…",
                finished_at=finished_at,
                ago=_seconds(now, finished_at) or 0.0,
            )
        )
    return tuple(failures)


def finished_by_minute(now: datetime, using: str) -> tuple[Finishes, ...]:
    """Tasks that ended in the last hour, by type and minute, ``*_recent`` of them in
    the last five minutes: the one read of the hour's finished tasks, for the queue
    table and the chart alike."""
    recent, failed = Q(finished_at__gte=now - RECENT), Q(state=TaskState.FAILED)
    rows = (
        BatchTask.objects.using(using)
        .filter(state__in=FINAL_STATES, finished_at__gte=now - HOUR)
        .annotate(minute=TruncMinute("finished_at"))
        .order_by()
        .values("definition_id", "minute")
        .annotate(
            finished_hour=Count("id"),
            failed_hour=Count("id", filter=failed),
            finished_recent=Count("id", filter=recent),
            failed_recent=Count("id", filter=recent & failed),
        )
    )
    return tuple(Finishes(row.pop("definition_id"), row.pop("minute"), Load(**row)) for row in rows)
