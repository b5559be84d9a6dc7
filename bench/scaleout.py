"""``make bench-scaleout``: throughput and the cost per task on each tier with 1, 2 and 3
worker containers, for each task shape.

Command (repository root; it builds and takes down its own stack, see .ci/docker-scaleout):

    make bench-scaleout            # or: .ci/docker-scaleout

.ci/docker-scaleout brings up PostgreSQL, Redis and the migrations (docker/compose.scaleout.yaml)
and creates three worker containers (``-c 2`` each, ``SCALEOUT_CONCURRENCY``), then runs
this driver on the host. For 1, then 2, then 3 worker containers (started one more at a
time) and each shape of ``SHAPES``, it submits the shape's tasks at once (``submit_many``)
after a warm-up, waits until none is unfinished and notes:

- the drain rate (tasks from the first submit to the last done, per second);
- the CPU seconds of each container during the drain, from its cgroup (``cpuacct.usage``
  of cgroup v1 or ``cpu.stat`` of v2, read on the host, else in the container), per task:
  the worker containers together, PostgreSQL's container (its backends serve the driver's
  submits and polls too), Redis's;
- the most connections each worker container held at once (``pg_stat_activity`` by client
  address, sampled twice a second), and per worker process (its main process and its
  ``-c`` pool processes).

``SCALEOUT_TASKS`` (20,000) tasks a drain, half as many one per message (a few times
slower); the process shape ``SCALEOUT_PROCESS_TASKS`` (500): a child per task is two
orders of magnitude slower. A warm-up of a fifth as many (at most 200) before each drain
lets the dispatcher measure the type's run time, which packs the messages.
``SCALEOUT_WORKERS`` (``1,2,3``): the numbers of worker containers. Progress goes to
stderr, the Markdown table to stdout.
"""

from __future__ import annotations

import functools
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = int(os.environ.get("SCALEOUT_TASKS", "20000"))
PROCESS_TASKS = int(os.environ.get("SCALEOUT_PROCESS_TASKS", "500"))
WORKER_COUNTS = [int(n) for n in os.environ.get("SCALEOUT_WORKERS", "1,2,3").split(",")]
CONCURRENCY = int(os.environ.get("SCALEOUT_CONCURRENCY", "2"))
WARM_UP = 200
#: Seconds of nothing to do, for each number of workers, whose CPU is taken off the drains'.
IDLE_SECONDS = 5.0


@dataclass(frozen=True)
class Shape:
    """A task shape: its type, and one task per message or not."""

    key: str
    label: str
    type_name: str
    tasks: int
    #: The definition row's ``tasks_per_message`` during the drain (``None``: the default).
    tasks_per_message: int | None = None


SHAPES = [
    Shape("packed", "packed tiny tasks (no-op, inline)", "examples.noop", TASKS),
    Shape("single", "one task per message (no-op, inline)", "examples.noop", TASKS // 2, 1),
    Shape("timed", "timed (no-op, timeout=60, inline)", "bench.timed", TASKS),
    Shape("process", "process isolation (no-op)", "examples.process_noop", PROCESS_TASKS),
]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- CPU of a container ------------------------------------------------------------------
def parse_cpuacct_usage(text: str) -> float:
    """Seconds from cgroup v1's ``cpuacct.usage`` (nanoseconds)."""
    return int(text.strip()) / 1e9


def parse_cpu_stat(text: str) -> float:
    """Seconds from cgroup v2's ``cpu.stat`` (its ``usage_usec`` line)."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "usage_usec":
            return int(value) / 1e6
    raise ValueError(f"no usage_usec in cpu.stat: {text[:80]!r}")


#: Where the host keeps a container's CPU account (cgroup v1, v2 with systemd, v2 without).
HOST_CGROUP_FILES: list[tuple[str, Callable[[str], float]]] = [
    ("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage", parse_cpuacct_usage),
    ("/sys/fs/cgroup/cpu,cpuacct/docker/{id}/cpuacct.usage", parse_cpuacct_usage),
    ("/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat", parse_cpu_stat),
    ("/sys/fs/cgroup/docker/{id}/cpu.stat", parse_cpu_stat),
]
#: The same, as the container sees its own cgroup (a private cgroup namespace).
OWN_CGROUP_FILES: list[tuple[str, Callable[[str], float]]] = [
    ("/sys/fs/cgroup/cpuacct/cpuacct.usage", parse_cpuacct_usage),
    ("/sys/fs/cgroup/cpu.stat", parse_cpu_stat),
]


def container_cpu(container_id: str) -> float:
    """CPU seconds (user + system) a container's processes used since it started."""
    for pattern, parse in HOST_CGROUP_FILES:
        path = Path(pattern.format(id=container_id))
        if path.exists():
            return parse(path.read_text())
    for path_text, parse in OWN_CGROUP_FILES:
        out = subprocess.run(
            ["docker", "exec", container_id, "cat", path_text],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode == 0:
            return parse(out.stdout)
    raise RuntimeError(f"no CPU account found for container {container_id}")


# --- connections ---------------------------------------------------------------------------
def peak_connections(
    samples: Iterable[dict[str, int]], addresses: dict[str, str]
) -> dict[str, int]:
    """The most connections each service held in any one sample: ``samples`` are counts
    by client address, ``addresses`` the services by address (others are left out)."""
    peak: dict[str, int] = {}
    for sample in samples:
        for address, count in sample.items():
            service = addresses.get(address)
            if service is not None:
                peak[service] = max(peak.get(service, 0), count)
    return peak


class ConnectionSampler(threading.Thread):
    """Counts of the database's client backends by client address, twice a second and
    at the end."""

    SQL = (
        "SELECT host(client_addr), count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND backend_type = 'client backend' "
        "AND pid <> pg_backend_pid() GROUP BY 1"
    )

    def __init__(self, url: str) -> None:
        super().__init__(name="connections", daemon=True)
        self.url = url
        self.samples: list[dict[str, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._halt.is_set():  # from the start to the end, however short
                self._sample(conn)
                self._halt.wait(0.5)
            self._sample(conn)

    def _sample(self, conn: Any) -> None:
        rows = conn.execute(self.SQL).fetchall()
        self.samples.append({str(address): int(n) for address, n in rows})

    def stop(self) -> list[dict[str, int]]:
        self._halt.set()
        self.join(timeout=10)
        return self.samples


# --- one drain -------------------------------------------------------------------------------
@dataclass
class Drain:
    """What one drain of one shape on ``workers`` containers measured."""

    shape: Shape
    workers: int
    seconds: float
    #: CPU seconds by service (``net_of_idle`` takes off what each uses with nothing to do).
    cpu: dict[str, float] = field(default_factory=dict)
    connections: dict[str, int] = field(default_factory=dict)  # by worker service: peak

    @property
    def rate(self) -> float:
        return self.shape.tasks / self.seconds

    def per_task_ms(self, *services: str) -> float:
        return sum(self.cpu.get(s, 0.0) for s in services) * 1000 / self.shape.tasks

    def worker_ms(self) -> float:
        return self.per_task_ms(*(s for s in self.cpu if s.startswith("scale-")))

    def cores(self) -> float:
        """Cores busy on average during the drain (every service, the driver too)."""
        return sum(self.cpu.values()) / self.seconds


def net_of_idle(used: dict[str, float], idle: dict[str, float], seconds: float) -> dict[str, float]:
    """CPU seconds of a drain of ``seconds`` less what each service uses idle (CPU seconds
    a second in ``idle``: heartbeats, safety-net passes, sweeps, the broker's polls)."""
    return {s: max(0.0, used[s] - idle.get(s, 0.0) * seconds) for s in used}


def table(drains: list[Drain], concurrency: int) -> list[str]:
    """The Markdown table: a row per shape and number of worker containers."""
    lines = [
        "| shape | worker containers | tasks/s | vs 1 container | CPU per task: workers "
        "| PostgreSQL | Redis | driver | cores busy beyond idle "
        "| tasks/s one PostgreSQL core would take "
        f"| connections per container (per process, -c {concurrency}) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    first: dict[str, float] = {}
    for d in drains:
        first.setdefault(d.shape.key, d.rate)
        pg = d.per_task_ms("postgres")
        peaks = [d.connections.get(f"scale-{i}", 0) for i in range(1, d.workers + 1)]
        conns = max(peaks) if peaks else 0
        lines.append(
            f"| {d.shape.label} | {d.workers} | {d.rate:,.0f} "
            f"| {d.rate / first[d.shape.key]:.2f}x | {d.worker_ms():.2f} ms "
            f"| {pg:.2f} ms | {d.per_task_ms('redis'):.2f} ms | {d.per_task_ms('driver'):.2f} ms "
            f"| {d.cores():.2f} | {1000 / pg:,.0f} | {conns} ({conns / (1 + concurrency):.1f}) |"
            if pg
            else f"| {d.shape.label} | {d.workers} | {d.rate:,.0f} |" + " — |" * 8
        )
    return lines


# --- the stack ------------------------------------------------------------------------------
class Stack:
    """Containers by service (``SCALEOUT_CONTAINERS``: ``service=id,...``, as
    .ci/docker-scaleout created them) and their addresses on the stack's network."""

    def __init__(self) -> None:
        pairs = (item.split("=", 1) for item in os.environ["SCALEOUT_CONTAINERS"].split(","))
        self.containers = dict(pairs)
        self.url = os.environ["DATABASE_URL"]

    def start(self, service: str) -> None:
        subprocess.run(
            ["docker", "start", self.containers[service]], check=True, stdout=subprocess.DEVNULL
        )

    def addresses(self) -> dict[str, str]:
        """Services by their IP address (those running)."""
        found = {}
        for service, cid in self.containers.items():
            out = subprocess.run(
                [
                    "docker",
                    "inspect",
                    "-f",
                    "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                    cid,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            for address in out.stdout.split():
                found[address] = service
        return found

    def cpu(self, services: Iterable[str]) -> dict[str, float]:
        seconds = {s: container_cpu(self.containers[s]) for s in services}
        usage = resource.getrusage(resource.RUSAGE_SELF)
        seconds["driver"] = usage.ru_utime + usage.ru_stime
        return seconds


def workers_online(n: int) -> bool:
    """Whether ``n`` workers have registered (the containers' agents are up)."""
    from batchtasks.models import BatchWorker
    from batchtasks.models.workers import WorkerState

    return BatchWorker.objects.filter(state=WorkerState.ONLINE).count() >= n


def reset() -> None:
    from django.db import connection

    with connection.cursor() as cursor:  # TRUNCATE leaves no dead rows to skew timings
        cursor.execute(
            "TRUNCATE batchtasks_batchtaskattempt, batchtasks_batchtaskparameters, "
            "batchtasks_batchtask"
        )


def submit_and_wait(type_name: str, n: int) -> float:
    """Submit ``n`` tasks at once; seconds until none is unfinished."""
    from batchtasks import BatchTask
    from bench.run import all_done, wait_until

    start = time.perf_counter()
    BatchTask.submit_many(type_name, [{}] * n)
    return wait_until(all_done, timeout=900, interval=0.1) - start


def set_tasks_per_message(type_name: str, value: int | None) -> None:
    from batchtasks.models import BatchTaskDefinition

    BatchTaskDefinition.objects.filter(name=type_name).update(tasks_per_message=value)


def services_of(workers: int) -> list[str]:
    return ["postgres", "redis", *(f"scale-{i}" for i in range(1, workers + 1))]


def idle_cpu(stack: Stack, workers: int, seconds: float = IDLE_SECONDS) -> dict[str, float]:
    """CPU seconds a second of each service with nothing to do."""
    before = stack.cpu(services_of(workers))
    time.sleep(seconds)
    after = stack.cpu(services_of(workers))
    return {s: (after[s] - before[s]) / seconds for s in after}


def drain(stack: Stack, shape: Shape, workers: int) -> Drain:
    """Warm up, then one measured drain of ``shape`` on ``workers`` containers."""
    services = services_of(workers)
    set_tasks_per_message(shape.type_name, shape.tasks_per_message)
    try:
        submit_and_wait(shape.type_name, min(WARM_UP, shape.tasks // 5))  # and measure run time
        reset()
        sampler = ConnectionSampler(stack.url)
        before = stack.cpu(services)
        sampler.start()
        seconds = submit_and_wait(shape.type_name, shape.tasks)
        after = stack.cpu(services)
        samples = sampler.stop()
    finally:
        set_tasks_per_message(shape.type_name, None)
    reset()
    result = Drain(shape, workers, seconds)
    result.cpu = {s: after[s] - before[s] for s in after}
    result.connections = peak_connections(samples, stack.addresses())
    log(f"  {shape.key} on {workers}: {result.rate:,.0f} tasks/s")
    return result


def main() -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    django.setup()
    import bench.tasks  # noqa: F401  (bench.timed, as the workers have it)
    from bench.run import wait_until

    stack = Stack()
    drains: list[Drain] = []
    idles: list[str] = []
    began = time.perf_counter()
    for workers in WORKER_COUNTS:
        for i in range(1, workers + 1):
            stack.start(f"scale-{i}")
        log(f"{workers} worker container(s) ...")
        wait_until(functools.partial(workers_online, workers), timeout=120, interval=0.5)
        tier = [drain(stack, shape, workers) for shape in SHAPES]
        idle = idle_cpu(stack, workers)  # after the drains: the workers' start-up is over
        idles.append(
            f"- idle, {workers} worker container(s): "
            + ", ".join(f"{s} {v * 1000:.1f} ms/s" for s, v in idle.items() if s != "driver")
        )
        log(idles[-1])
        for d in tier:
            d.cpu = net_of_idle(d.cpu, idle, d.seconds)
        drains += tier
    print(f"\n(worker containers -c {CONCURRENCY}; {os.cpu_count()} CPU cores on this host)\n")
    print("\n".join(table(drains, CONCURRENCY)))
    print("\nCPU with nothing to do (taken off the drains' figures above):\n")
    print("\n".join(idles))
    print(f"\n({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
