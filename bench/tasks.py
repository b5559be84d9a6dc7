"""Plain Celery tasks, the baseline the benchmark compares batch tasks with."""

from __future__ import annotations

import os
import time

import redis
from celery import shared_task

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
