"""What the Prometheus endpoint reports, read from the database at scrape time.

The database is the only place that knows the whole cluster: workers run on many hosts
and come and go, so a counter kept in a worker's memory (or in prometheus-client's
multiprocess files, which one host's processes share) would see one host and start again
at every restart. Every figure here is therefore read from the rows, with the same fixed
handful of aggregate queries whatever the table's size (see ``read``), and every age
and window is measured with one reading of the database's clock.

Rows of finished tasks and their attempts are deleted when their type's retention runs
out (at once for ``retention=0``). A total derived from them would go down after a
purge, which a Prometheus counter must never do. Finishes, attempts, retries, lost runs
and run times are therefore reported as gauges over a sliding window (the last hour,
``WINDOW``): exact for the window, never a counter. Only final tasks whose row is gone
within the hour (``retention`` under an hour) are missing from them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connections, router
from django.db.models import Count

from ..core.states import FINAL_STATES, IN_FLIGHT_STATES, TaskState
from ..db.sql import Tables, db_datetime, states_sql
from ..models import BatchTask, WorkerState
from .monitor import QueueLoad, WorkerStatus, database_now, queue_loads, workers

#: The window of the ``*_last_hour`` figures.
WINDOW = timedelta(hours=1)
#: Upper bounds (seconds) of the run-time histogram's buckets; ``+Inf`` is added.
RUN_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass
class RunStats:
    """The attempts of one type that ended in the window."""

    #: Attempts by how they ended (an ``AttemptOutcome``; ``lost``: the worker went away).
    outcomes: dict[str, int] = field(default_factory=dict)
    #: Attempts numbered 2 or later: runs after a failed or lost one.
    retries: int = 0
    #: How many of the attempts had started, their run seconds added up, and how many
    #: ran at most each of ``RUN_BUCKETS`` (cumulative, as Prometheus buckets are).
    timed: int = 0
    seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(RUN_BUCKETS))


@dataclass(frozen=True)
class Figures:
    """Everything the endpoint reports, as of ``now`` by the database's clock."""

    now: datetime
    queues: tuple[QueueLoad, ...]
    workers: tuple[WorkerStatus, ...]
    #: Tasks that became final in the window: ``(definition id, state) -> count``.
    finished: dict[tuple[int, str], int]
    #: Attempts that ended in the window, by definition id.
    runs: dict[int, RunStats]

    @property
    def workers_online(self) -> tuple[WorkerStatus, ...]:
        """Workers whose heartbeat is not overdue."""
        return tuple(w for w in self.workers if w.state == WorkerState.ONLINE)


def read(using: str | None = None) -> Figures:
    """Read every figure in eight queries: the clock, the monitor's four for the queue
    loads, the workers, and two over the window (the task ones served by partial indexes)."""
    db = using or router.db_for_read(BatchTask)
    now = database_now(db)
    since = now - WINDOW
    return Figures(
        now=now,
        queues=queue_loads(now, db, ()),
        workers=workers(now, db),
        finished=finished_since(since, db),
        runs=runs_since(since, db),
    )


def finished_since(since: datetime, using: str) -> dict[tuple[int, str], int]:
    """Tasks that became final since ``since``, by type and state (an index-only scan
    of the finished tasks' index over the window)."""
    rows = (
        BatchTask.objects.using(using)
        .filter(state__in=FINAL_STATES, finished_at__gte=since)
        .order_by()
        .values_list("definition_id", "state")
        # COUNT(*), not COUNT(id): the id is not in that index, and need not be read.
        .annotate(n=Count("*"))
    )
    return {(definition_id, state): n for definition_id, state, n in rows}


def runs_since(since: datetime, using: str) -> dict[int, RunStats]:
    """Attempts that ended since ``since``, by type.

    The attempts table has no index on its end time. But an attempt that ended in the
    window belongs to a task that is final since then (a task ends with or after its
    last attempt) or is unfinished after an earlier attempt (``attempt > 1``): those few
    tasks come from the partial indexes, their attempts by the (task, number) key.
    """
    connection = connections[using]
    sql = _runs_sql(connection.vendor == "postgresql", Tables(connection))
    stamp = db_datetime(connection, since)
    runs: dict[int, RunStats] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, [stamp, stamp])
        for definition_id, outcome, retry, n, timed, seconds, *buckets in cursor.fetchall():
            stats = runs.setdefault(definition_id, RunStats())
            stats.outcomes[outcome] = stats.outcomes.get(outcome, 0) + n
            stats.retries += n if retry else 0
            stats.timed += timed
            stats.seconds += float(seconds or 0)
            stats.buckets = [a + int(b or 0) for a, b in zip(stats.buckets, buckets, strict=True)]
    return runs


def _runs_sql(postgresql: bool, t: Tables) -> str:
    candidates = " UNION ALL ".join(_candidates(t))
    if postgresql:
        seconds = "EXTRACT(EPOCH FROM (a.finished_at - a.started_at))"
        # A probe of the (task, number) key per candidate task. Joined plainly, PostgreSQL
        # hashes the whole attempts table instead (127 ms of 150 on a million rows,
        # bench/metrics_scrape.py); OFFSET 0 keeps it from flattening the subquery.
        attempts = (
            f"CROSS JOIN LATERAL (SELECT outcome, number, started_at, finished_at "
            f"FROM {t.attempt} WHERE task_id = t.id AND finished_at >= %s OFFSET 0) a"
        )
    else:
        seconds = "((JULIANDAY(a.finished_at) - JULIANDAY(a.started_at)) * 86400.0)"
        attempts = f"JOIN {t.attempt} a ON a.task_id = t.id AND a.finished_at >= %s"
    buckets = ", ".join(
        f"SUM(CASE WHEN seconds <= {bound!r} THEN 1 ELSE 0 END)" for bound in RUN_BUCKETS
    )
    return (
        f"SELECT definition_id, outcome, retry, COUNT(*), COUNT(seconds), SUM(seconds), "
        f"{buckets} FROM (SELECT t.definition_id, a.outcome, "
        f"CASE WHEN a.number > 1 THEN 1 ELSE 0 END AS retry, {seconds} AS seconds "
        f"FROM ({candidates}) t {attempts}) x GROUP BY definition_id, outcome, retry"
    )


def _candidates(t: Tables) -> Iterator[str]:
    """The tasks that may own an attempt ended in the window, one partial index each."""
    yield (
        f"SELECT id, definition_id FROM {t.task} "
        f"WHERE state IN ({states_sql(*FINAL_STATES)}) AND finished_at >= %s"
    )
    yield f"SELECT id, definition_id FROM {t.task} WHERE state = '{TaskState.NEW}' AND attempt > 1"
    yield (
        f"SELECT id, definition_id FROM {t.task} "
        f"WHERE state IN ({states_sql(*IN_FLIGHT_STATES)}) AND attempt > 1"
    )
