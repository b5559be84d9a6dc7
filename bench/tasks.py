"""Plain Celery tasks, the baseline the benchmark compares batch tasks with, and the
batch task types only the benchmark uses."""

from __future__ import annotations

import os
import time

import redis
from celery import shared_task

from batchtasks import BatchTaskPlugin, batchtask

#: The time limit of the timed no-op tasks, ours and plain Celery's.
TIMED_LIMIT = 60

_client: redis.Redis | None = None


def client() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["REDIS_URL"])
    return _client


def key(name: str) -> str:
    return os.environ.get("BATCHTASKS_REDIS_PREFIX", "") + "bench:" + name


@shared_task(name="bench.noop", ignore_result=True)
def noop() -> None:
    """Do nothing but count (the benchmark waits for the count)."""
    client().incr(key("done"))


@shared_task(name="bench.stamp", ignore_result=True)
def stamp(i: int) -> None:
    """Record when the task body started."""
    client().set(key(f"stamp:{i}"), repr(time.time()))


@shared_task(name="bench.noop_late", ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def noop_late() -> None:
    """Like ``noop`` but acknowledged after it ran, as batch tasks are."""
    client().incr(key("done"))


@shared_task(name="bench.noop_timed", ignore_result=True, time_limit=TIMED_LIMIT)
def noop_timed() -> None:
    """Like ``noop`` under a hard time limit (Celery's, per message)."""
    client().incr(key("done"))


@batchtask("bench.timed", timeout=TIMED_LIMIT, description="Do nothing, timed (bench).")
class NoopTimed(BatchTaskPlugin):
    """A no-op batch task type with a hard time limit (the worker's, per task)."""

    def run(self, params: object) -> None:
        return None
