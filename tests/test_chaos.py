"""Chaos: 500 tasks over two workers while a worker is SIGKILLed twice, a pool process is
killed, Redis restarts empty and PostgreSQL goes away for a few seconds. Every task must
end succeeded, with one successful attempt, having run at least once and run again only
if it was in hand at a kill."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
from django.db import connection

from batchtasks import BatchTask, TaskState
from batchtasks.models import BatchTaskAttempt, BatchTaskDefinition
from batchtasks.services.definitions import get_definition
from tests import rabbitmq
from tests.conftest import broker_at, runs_of
from tests.test_recovery import FAST
from tests.test_workers import wait_final
from tests.workers import wait_for

pytestmark = pytest.mark.worker

TASKS = 500
SLEEP = ["batch.examples.sleep"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of the test's own that keeps nothing on disk."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: self._pings(client), timeout=10)

    @staticmethod
    def _pings(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart_empty(self, down: float = 0.0) -> None:
        """Stop it, keep it down ``down`` seconds, start it again: empty."""
        client = redis.Redis.from_url(self.url)
        client.set("chaos:sentinel", "1")
        self.stop()
        time.sleep(down)
        self.start()
        assert not client.exists("chaos:sentinel"), "everything it held is gone"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer | rabbitmq.EmptiedQueues]:
    if rabbitmq.in_use():  # the run's own virtual host; its "restart" empties the queues
        yield rabbitmq.EmptiedQueues(SLEEP)
        return
    if shutil.which("redis-server") is None:
        pytest.fail("the chaos test needs redis-server installed (it starts its own)")
    server = RedisServer(tmp_path)
    server.start()
    with broker_at(server.url, max_retries=None):
        yield server
    server.stop()


def database_outage(seconds: float) -> None:
    """As a PostgreSQL restart looks to its clients: every session dropped, and no new
    one accepted for a while (only this test's own session survives)."""
    s = connection.settings_dict
    name = s["NAME"]
    admin = psycopg.connect(
        host=s["HOST"], port=s["PORT"], user=s["USER"], dbname="postgres", autocommit=True
    )
    with admin, connection.cursor() as cursor:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            time.sleep(seconds)
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def succeeded() -> int:
    return BatchTask.objects.filter(state=TaskState.SUCCEEDED).count()


def running_on(hostname: str) -> int:
    return BatchTask.objects.filter(state=TaskState.RUNNING, worker=hostname).count()


def test_nothing_is_lost_and_nothing_runs_needlessly_twice(
    start_worker, private_redis: RedisServer | rabbitmq.EmptiedQueues, record_dir: Path
) -> None:
    # A measured run time puts several tasks in a message: the chaos hits batches too.
    BatchTaskDefinition.objects.filter(pk=get_definition("examples.sleep").pk).update(
        max_attempts=10, run_seconds=0.05
    )
    env = {**FAST, "REDIS_URL": private_redis.url}
    a = start_worker("a", SLEEP, concurrency=2, env=env)
    b = start_worker("b", SLEEP, concurrency=2, env=env)
    tasks = BatchTask.submit_many("examples.sleep", [{"seconds": 0.05, "record": True}] * TASKS)
    in_hand = 0

    def kill_a() -> int:
        a.kill()
        held = running_on(a.hostname)  # dead now: exactly what it held at the kill
        a.start(wait=False)
        return held

    wait_for(lambda: succeeded() >= TASKS * 0.1, timeout=120)
    in_hand += kill_a()

    wait_for(lambda: succeeded() >= TASKS * 0.3, timeout=120)
    child = psutil.Process(b.process.pid).children()[0]
    child.send_signal(signal.SIGSTOP)  # frozen: what it holds cannot change now
    in_hand += BatchTask.objects.filter(state=TaskState.RUNNING, worker_pid=child.pid).count()
    child.send_signal(signal.SIGKILL)

    wait_for(lambda: succeeded() >= TASKS * 0.5, timeout=120)
    private_redis.restart_empty()

    wait_for(lambda: succeeded() >= TASKS * 0.7, timeout=180)
    in_hand += kill_a()

    wait_for(lambda: succeeded() >= TASKS * 0.85, timeout=180)
    database_outage(seconds=3)

    wait_for(lambda: succeeded() == TASKS, timeout=300, interval=0.5)

    ids = [t.pk for t in tasks]
    assert not BatchTask.objects.filter(pk__in=ids).exclude(state=TaskState.SUCCEEDED).exists()
    wins = BatchTaskAttempt.objects.filter(task_id__in=ids, outcome=TaskState.SUCCEEDED)
    assert wins.count() == TASKS
    assert wins.values("task_id").distinct().count() == TASKS
    runs = {pk: len(runs_of(record_dir, pk)) for pk in ids}
    assert min(runs.values()) >= 1, "every task ran"
    repeated = sum(n - 1 for n in runs.values())
    assert repeated <= in_hand, f"{repeated} repeated runs, {in_hand} tasks were in hand"
    print(f"chaos: in hand at kills={in_hand} repeated runs={repeated}")


def test_a_worker_with_runs_in_hand_outlives_a_broker_restart(
    start_worker, private_redis: RedisServer | rabbitmq.EmptiedQueues, record_dir: Path
) -> None:
    """As deployed (gossip, mingle and heartbeats over the broker's pub/sub), with its
    messages unacked while they run (acks_late), Redis down for 2 s: it reconnects and
    runs on. (The race that made such workers exit in the chaos stack, a channel closed
    after the transport was let go of, is pinned in tests/test_redis_transport.py.)"""
    env = {**FAST, "REDIS_URL": private_redis.url}
    w = start_worker("w", SLEEP, concurrency=2, env=env, chatty=True)
    held = BatchTask.submit_many("examples.sleep", [{"seconds": 4, "record": True}] * 2)
    wait_for(lambda: running_on(w.hostname) == 2, timeout=30)

    private_redis.restart_empty(down=2)  # down while the worker closes what broke

    done = wait_final(*held, timeout=60)
    assert [t.state for t in done] == [TaskState.SUCCEEDED] * 2
    assert w.process is not None and w.process.poll() is None, w.log()[-3000:]
    (after,) = wait_final(BatchTask.submit("examples.sleep", {"seconds": 0.1}), timeout=60)
    assert (after.state, after.worker) == (TaskState.SUCCEEDED, w.hostname)
    assert "Unrecoverable error" not in w.log()
