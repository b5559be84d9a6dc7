"""The workers' own rows (``BatchWorker``): one per boot of a worker, its heartbeats,
and finding the boots that died without a word.

A worker is known by its per-boot instance id, not by its node name: two workers
started with one name each hold and renew only their own attempts. A boot whose
process is gone from this machine (a worker SIGKILLed and restarted) is found at once
by its pid, where the pid means something: the same kernel boot and pid namespace.
Elsewhere its attempts wait for their leases to expire.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import psutil
from django.db import connections
from django.db.models.functions import Now

from ..db.sql import Clock, Tables
from ..models import BatchWorker, WorkerState
from . import leases

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    """One boot of a worker."""

    name: str
    instance: str
    pid: int
    process_space: str
    #: When the process started, by this machine's clock (compared only here).
    process_started: float


def process_space() -> str:
    """Where a pid names one process: the kernel's boot id and this pid namespace
    (Linux); empty where that cannot be known."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def register_worker(
    identity: Identity, *, queues: list[str], concurrency: int, using: str
) -> BatchWorker:
    """Record a boot of a worker as online."""
    return BatchWorker.objects.using(using).create(
        name=identity.name,
        instance=identity.instance,
        host=identity.name.rpartition("@")[2] or os.uname().nodename,
        process_space=identity.process_space,
        pid=identity.pid,
        process_started=identity.process_started,
        queues=queues,
        concurrency=concurrency,
        state=WorkerState.ONLINE,
        started_at=Now(),
        last_seen_at=Now(),
    )


def worker_seen(
    instance: str, *, in_hand: int, cpu: float | None, memory: int | None, using: str
) -> None:
    """A worker's heartbeat: what it holds and uses now."""
    BatchWorker.objects.using(using).filter(instance=instance).update(
        tasks_in_hand=in_hand,
        cpu_percent=cpu,
        memory_bytes=memory,
        state=WorkerState.ONLINE,
        last_seen_at=Now(),
    )


def worker_stopped(instance: str, *, using: str) -> None:
    """A worker shut down cleanly."""
    BatchWorker.objects.using(using).filter(instance=instance).update(
        state=WorkerState.STOPPED, tasks_in_hand=0, last_seen_at=Now()
    )


def workers_gone(*, silent_for: float, using: str) -> int:
    """Mark online workers not heard from for ``silent_for`` seconds offline."""
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {t.worker} SET state = %s WHERE state = %s AND last_seen_at < {clock.after}",
            [WorkerState.OFFLINE, WorkerState.ONLINE, clock.param(-silent_for)],
        )
        return cursor.rowcount


def forget_workers(*, older_than: float, using: str) -> int:
    """Delete the rows of workers stopped or offline for ``older_than`` seconds."""
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {t.worker} WHERE state <> %s AND last_seen_at < {clock.after}",
            [WorkerState.ONLINE, clock.param(-older_than)],
        )
        return cursor.rowcount


def _alive(worker: BatchWorker) -> bool:
    try:
        started = psutil.Process(worker.pid).create_time()
    except psutil.Error:
        return False
    return worker.process_started is None or abs(started - worker.process_started) < 1.0


def reap_dead_instances(space: str, *, exclude: str, using: str) -> list[str]:
    """End the attempts of worker boots in process space ``space`` whose process is
    gone (they run again at once, or end cancelled if that was asked); mark those
    boots offline. Returns the queue of each attempt ended (their slots are free)."""
    if not space:
        return []
    freed: list[str] = []
    candidates = (
        BatchWorker.objects.using(using)
        .filter(process_space=space, state=WorkerState.ONLINE)
        .exclude(instance=exclude)
    )
    for worker in candidates:
        if _alive(worker):
            continue
        for held in leases.running_on(worker.instance, using=using):
            message = f"worker {held.worker} (pid {worker.pid}) died while running it"
            if leases.lose(held, leases.WORKER_LOST, message, using=using) is not None:
                freed.append(held.queue)
        BatchWorker.objects.using(using).filter(pk=worker.pk).update(state=WorkerState.OFFLINE)
        logger.warning(
            "batchtasks worker found dead worker=%s instance=%s pid=%s",
            worker.name,
            worker.instance,
            worker.pid,
        )
    return freed
