"""The concurrency matrix: queues, their types and limits, and the workers that serve them."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from ..core.conf import get_settings
from ..core.names import is_name
from ..models import BatchQueue, BatchTaskDefinition


@dataclass(frozen=True)
class MatrixType:
    """A type in the matrix: its name, cluster-wide limit and whether it is enabled."""

    name: str
    max_concurrency: int | None
    enabled: bool


@dataclass(frozen=True)
class MatrixQueue:
    """A queue in the matrix, with its limit and its types."""

    name: str
    max_concurrency: int | None
    types: tuple[MatrixType, ...]

    @property
    def useful_concurrency(self) -> int | None:
        """Most tasks this queue can run at once cluster-wide (``None``: unlimited)."""
        type_limits = [t.max_concurrency for t in self.types if t.enabled]
        total = None if None in type_limits else sum(type_limits)  # type: ignore[arg-type]
        limits = [x for x in (total, self.max_concurrency) if x is not None]
        return min(limits) if limits else None


def celery_app_name() -> str:
    """The ``-A`` argument for worker command lines."""
    configured = get_settings().CELERY_APP
    if configured:
        return configured
    from celery import current_app

    return current_app.main or "project"


def build_matrix() -> list[MatrixQueue]:
    """Every queue with a definition, and its types."""
    limits = dict(BatchQueue.objects.values_list("name", "max_concurrency"))
    by_queue: dict[str, list[MatrixType]] = {}
    for d in BatchTaskDefinition.objects.order_by("queue", "name"):
        by_queue.setdefault(d.queue, []).append(MatrixType(d.name, d.max_concurrency, d.enabled))
    return [
        MatrixQueue(name, limits.get(name), tuple(types))
        for name, types in sorted(by_queue.items())
    ]


def worker_argv(queues: list[str] | tuple[str, ...], concurrency: int, node: str) -> list[str]:
    """The arguments of a ``celery worker`` that serves ``queues``."""
    return [
        "celery", "-A", celery_app_name(), "worker", "-Q", ",".join(queues),
        "-c", str(concurrency), "--prefetch-multiplier", "1", "-n", f"{node}@%h",
    ]  # fmt: skip


def worker_command(queues: list[str], concurrency: int, node: str) -> str:
    """``worker_argv`` as a shell line: every value quoted where a shell would read it
    otherwise (a queue row written past the admin's validation may hold anything)."""
    return shlex.join(worker_argv(queues, concurrency, node))


def _limit(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def _shown(name: str) -> str:
    """A name as the matrix lists it: one that breaks the naming rule in quotes, escaped,
    so that it shows as odd and cannot start a line of its own."""
    return name if is_name(name) else repr(name)


def render_matrix(rows: list[MatrixQueue]) -> str:
    """The matrix as text, with one worker command line per queue."""
    if not rows:
        return "No task types are registered (BATCHTASKS['PLUGINS'] lists their modules).\n"
    cpus = os.cpu_count() or 2
    lines = ["Queues and task types (limits are cluster-wide, queued + running):", ""]
    for row in rows:
        lines.append(f"{_shown(row.name)}  (queue limit: {_limit(row.max_concurrency)})")
        for t in row.types:
            state = "" if t.enabled else "  [disabled]"
            limit = _limit(t.max_concurrency)
            lines.append(f"    {_shown(t.name):<40} max_concurrency={limit}{state}")
    lines += ["", "Worker command lines (one per queue; run as many hosts as you like):", ""]
    for row in rows:
        useful = row.useful_concurrency
        concurrency = useful if useful is not None else cpus
        note = "" if useful is not None else "   # unlimited: size -c per server"
        node = row.name.replace(".", "-")
        lines.append(worker_command([row.name], concurrency, node) + note)
    everything = [row.name for row in rows]
    lines += ["", "Or one worker for every batch queue:", ""]
    lines.append(worker_command(everything, cpus, "batch"))
    return "\n".join(lines) + "\n"
