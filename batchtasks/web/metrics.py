"""The Prometheus endpoint: the load of every queue and type, the last hour's finishes,
attempts and run times, and the workers online, read from the database at each scrape.

A custom collector on a private registry turns ``services.metrics.read()`` into metric
families; nothing is kept between scrapes, so any web process answers alike (why the
figures come from the database and the windowed ones are gauges: that module's
docstring). Who may scrape: ``BATCHTASKS["METRICS_AUTH"]`` (by default sessions of staff
with ``batchtasks.view_batchtask``).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from ..core.conf import get_settings
from ..core.states import UNFINISHED_STATES
from ..services import metrics
from ..services.monitor import QueueLoad, TypeLoad

#: What staff need to scrape, as for the monitor page.
VIEW = "batchtasks.view_batchtask"


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"batchtasks_{name}", doc, labels=labels)


class BatchTasksCollector:
    """Reads the figures once per scrape and yields them as metric families."""

    def __init__(self, using: str | None = None) -> None:
        self.using = using

    def collect(self) -> Iterator[Metric]:
        figures = metrics.read(self.using)
        types = [(q, t) for q in figures.queues for t in q.types]
        yield from queue_families(figures.queues)
        yield from type_families(types)
        yield from finished_family(figures, types)
        yield from attempt_families(figures, types)
        yield from worker_families(figures)


def queue_families(queues: tuple[QueueLoad, ...]) -> Iterator[Metric]:
    """Per queue: waiting, delayed, oldest wait, in flight and its limit."""
    waiting = _gauge(
        "queue_waiting", "Tasks waiting for dispatch (state new), delayed ones included.", ["queue"]
    )
    delayed = _gauge("queue_delayed", "Waiting tasks whose run_after is still ahead.", ["queue"])
    oldest = _gauge(
        "queue_oldest_wait_seconds",
        "Seconds the longest-waiting due task has waited since it was submitted or fell "
        "due (0: none waits).",
        ["queue"],
    )
    in_flight = _gauge(
        "queue_in_flight", "Tasks queued or running: those that count against a limit.", ["queue"]
    )
    limit = _gauge(
        "queue_in_flight_limit",
        "Most tasks the queue may have in flight (absent: no queue limit).",
        ["queue"],
    )
    for q in queues:
        load = q.load
        waiting.add_metric([q.name], load.waiting)
        delayed.add_metric([q.name], load.delayed)
        oldest.add_metric([q.name], load.oldest_wait or 0.0)
        in_flight.add_metric([q.name], load.in_flight)
        if q.max_concurrency is not None:
            limit.add_metric([q.name], q.max_concurrency)
    yield from (waiting, delayed, oldest, in_flight, limit)


def type_families(types: list[tuple[QueueLoad, TypeLoad]]) -> Iterator[Metric]:
    """Per type: unfinished tasks by state, in flight and its limit."""
    tasks = _gauge(
        "tasks",
        "Unfinished tasks by type and state: blocked (waiting for their parents), new "
        "(waiting for dispatch, delayed included), queued (published, not yet claimed), "
        "running. Finished ones: *_last_hour.",
        ["type", "queue", "state"],
    )
    in_flight = _gauge("type_in_flight", "Tasks of the type queued or running.", ["type", "queue"])
    limit = _gauge(
        "type_in_flight_limit",
        "Most tasks of the type in flight at once (absent: no type limit).",
        ["type", "queue"],
    )
    for q, t in types:
        counts = {
            "blocked": t.load.blocked,
            "new": t.load.waiting,
            "queued": t.load.queued,
            "running": t.load.running,
        }
        for state in UNFINISHED_STATES:
            tasks.add_metric([t.name, q.name, state], counts[state])
        in_flight.add_metric([t.name, q.name], t.load.in_flight)
        if t.max_concurrency is not None:
            limit.add_metric([t.name, q.name], t.max_concurrency)
    yield from (tasks, in_flight, limit)


def finished_family(
    figures: metrics.Figures, types: list[tuple[QueueLoad, TypeLoad]]
) -> Iterator[Metric]:
    """Per type: the tasks that became final in the last hour, by state."""
    finished = _gauge(
        "finished_last_hour",
        "Tasks that became final in the last hour, by final state (a gauge over a "
        "sliding window, not a counter: finished rows are purged).",
        ["type", "queue", "state"],
    )
    names_of = {t.id: [t.name, q.name] for q, t in types}
    for (definition_id, state), n in sorted(figures.finished.items()):
        if (names := names_of.get(definition_id)) is not None:
            finished.add_metric([*names, state], n)
    yield finished


def attempt_families(
    figures: metrics.Figures, types: list[tuple[QueueLoad, TypeLoad]]
) -> Iterator[Metric]:
    """Per type, the attempts that ended in the last hour: by outcome, the retries among
    them, and their run times."""
    labels = ["type", "queue"]
    attempts = _gauge(
        "attempts_last_hour",
        "Attempts (runs) that ended in the last hour, by outcome; outcome lost: the "
        "run's worker or process went away (killed, out of memory, host lost).",
        [*labels, "outcome"],
    )
    retries = _gauge(
        "retries_last_hour",
        "Attempts that ended in the last hour and were a retry (attempt 2 or later).",
        labels,
    )
    run_time = GaugeHistogramMetricFamily(
        "batchtasks_run_seconds_last_hour",
        "Run time (claim to end) of the attempts that ended in the last hour.",
        labels=labels,
    )
    bounds = [*(repr(b) for b in metrics.RUN_BUCKETS), "+Inf"]
    for q, t in types:
        stats = figures.runs.get(t.id, metrics.RunStats())
        for outcome, n in sorted(stats.outcomes.items()):
            attempts.add_metric([t.name, q.name, outcome], n)
        retries.add_metric([t.name, q.name], stats.retries)
        counts = [*stats.buckets, stats.timed]
        run_time.add_metric([t.name, q.name], list(zip(bounds, counts, strict=True)), stats.seconds)
    yield from (attempts, retries, run_time)


def worker_families(figures: metrics.Figures) -> Iterator[Metric]:
    """Workers heard from, and their pool processes."""
    online = figures.workers_online
    workers = _gauge("workers_online", "Workers whose last heartbeat is within the lease.", [])
    workers.add_metric([], len(online))
    processes = _gauge("worker_processes", "Pool processes of the workers online (-c).", [])
    processes.add_metric([], sum(w.concurrency for w in online))
    yield from (workers, processes)


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)  # no query at registration
    registry.register(BatchTasksCollector())
    return registry


def may_scrape(request: HttpRequest) -> bool:
    """Whether one of the ``METRICS_AUTH`` methods lets this request in."""
    conf = get_settings()
    methods = conf.METRICS_AUTH
    user = getattr(request, "user", None)
    if "staff" in methods and _staff_who_may_view(user):
        return True
    if "token" in methods and conf.METRICS_TOKEN:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        # compare_digest: the time taken tells nothing about how much of a guess matched.
        if scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), conf.METRICS_TOKEN.encode()
        ):
            return True
    if "ip" in methods and conf.METRICS_ALLOW:
        return _address_allowed(request.META.get("REMOTE_ADDR", ""), conf.METRICS_ALLOW)
    return False


def _staff_who_may_view(user: Any) -> bool:
    """An active staff user with ``batchtasks.view_batchtask``: the figures name every
    type and queue, as the monitor page shows them, so the same permission."""
    return bool(user is not None and user.is_active and user.is_staff and user.has_perm(VIEW))


def _address_allowed(address: str, networks: tuple[str, ...]) -> bool:
    try:
        client = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(client in ipaddress.ip_network(n) for n in networks)


@never_cache
@require_safe
def scrape(request: HttpRequest) -> HttpResponse:
    """The metrics in Prometheus' text format (OpenMetrics when the scraper asks)."""
    if not may_scrape(request):
        refused = HttpResponse("Not allowed.\n", content_type="text/plain", status=403)
        if "token" in get_settings().METRICS_AUTH:
            refused.status_code = 401
            refused["WWW-Authenticate"] = 'Bearer realm="batchtasks metrics"'
        return refused
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(_registry()), content_type=content_type)
