from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import connection
from django.test import Client

from batchtasks.db.connections import close_state_connections
from batchtasks.models import BatchTaskDefinition
from batchtasks.services.definitions import get_definition, sync_definitions
from batchtasks.transport.depth import queue_depth
from tests import pgbouncer, rabbitmq
from tests.accounts import make_user
from tests.openapi import ApiClient
from tests.workers import Worker

ALL_QUEUES = [
    "batch.examples.noop",
    "batch.examples.sleep",
    "batch.examples.fail",
    "batch.examples.merge",
    "batch.examples.flaky",
    "batch.examples.progress",
    "batch.reports",
    "batch.examples.process_progress",
    "batch.examples.process_noop",
    "batch.examples.process_memory_hog",
    "batch.examples.process_spawner",
    "batch.examples.silent",
    "batch.examples.program",
    "batch.mail",
    "batch.imaging",
    "batch.finalizers",
]


@pytest.fixture(scope="session", autouse=True)
def _rabbitmq_vhost() -> Iterator[None]:
    """On the RabbitMQ leg, the run's own virtual host (tests/rabbitmq.py)."""
    if not rabbitmq.in_use():
        yield
        return
    with rabbitmq.own_vhost():
        yield


@pytest.fixture(scope="session", autouse=True)
def _require_postgres(django_db_setup: None) -> Iterator[None]:
    if connection.vendor != "postgresql":
        pytest.exit("The tests need PostgreSQL: set DATABASE_URL (see README).", returncode=2)
    yield
    close_state_connections()  # before the test database is dropped
    if pgbouncer.in_use():
        pgbouncer.close_server_connections(connection.settings_dict)


@pytest.fixture(scope="session", autouse=True)
def _clean_redis_prefix() -> Iterator[None]:
    yield
    prefix = os.environ["BATCHTASKS_REDIS_PREFIX"]
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@contextmanager
def broker_at(url: str, max_retries: int | None = 1) -> Iterator[None]:
    """Point the Celery app at another broker, dropping its pooled connections."""
    from project.celery import app

    saved = app.conf.broker_url, app.conf.broker_connection_max_retries

    def reset() -> None:  # kombu keeps one pool per URL; the app must look it up again
        app._pool = None
        app.amqp._producer_pool = None

    app.conf.broker_url, app.conf.broker_connection_max_retries = url, max_retries
    reset()
    try:
        yield
    finally:
        app.conf.broker_url, app.conf.broker_connection_max_retries = saved
        reset()


def purge_queues(queues: list[str]) -> None:
    """Drop messages left in the broker by earlier tests."""
    from project.celery import app

    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in queues:
            if queue_depth(queue, app=app):  # RabbitMQ refuses to purge an undeclared queue
                channel.queue_purge(queue)


@pytest.fixture
def media_root(tmp_path: Path) -> Path:
    """The MEDIA_ROOT of the workers a test starts."""
    path = tmp_path / "media"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def record_dir(media_root: Path) -> Path:
    """Where example plugins given ``{"record": True}`` note each run (plugins.examples)."""
    path = media_root / "batchtasks" / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_of(record_dir: Path, task_id: int) -> list[tuple[int, float, float | None]]:
    """The runs the plugin itself recorded for a task: (pid, start, end or None if the
    run never reached its end)."""
    path = record_dir / str(task_id)
    if not path.exists():
        return []
    runs: list[tuple[int, float, float | None]] = []
    for line in path.read_text().splitlines():
        event, pid, when = line.split()
        if event == "start":
            runs.append((int(pid), float(when), None))
        else:
            at = max(i for i, run in enumerate(runs) if run[0] == int(pid) and run[2] is None)
            runs[at] = (int(pid), runs[at][1], float(when))
    return runs


@pytest.fixture
def definitions(transactional_db: None) -> None:
    sync_definitions()


def set_limit(type_name: str, limit: int | None) -> None:
    definition = get_definition(type_name)
    BatchTaskDefinition.objects.filter(pk=definition.pk).update(max_concurrency=limit)


@pytest.fixture
def start_worker(
    transactional_db: None, definitions: None, tmp_path: Path, media_root: Path
) -> Iterator[Callable[..., Worker]]:
    """Start real worker processes; all are stopped before the database is flushed."""
    started: list[Worker] = []
    purge_queues(ALL_QUEUES)

    def start(
        name: str = "w1",
        queues: list[str] | None = None,
        concurrency: int = 2,
        wait: bool = True,
        env: dict[str, str] | None = None,
        *,
        extra_args: list[str] | None = None,
        chatty: bool = False,
    ) -> Worker:
        twins = sum(1 for w in started if w.name == name)
        worker = Worker(
            name,
            queues or ALL_QUEUES,
            concurrency=concurrency,
            log_dir=tmp_path,
            env={"DJANGO_MEDIA_ROOT": str(media_root), **(env or {})},
            log_name=f"{name}-{twins + 1}" if twins else name,
            extra_args=extra_args,
            chatty=chatty,
        )
        started.append(worker)
        return worker.start(wait=wait)

    yield start
    # Killed: what they were doing no longer matters, and a warm shutdown took ~3 s a
    # worker (a third of the suite's time; Celery's cold one 2 s, sometimes 15). A
    # process-isolated child notices its pool process gone and ends its own group.
    for worker in started:
        worker.kill()
    connection.close()


# --- users of the API tests (tests/accounts.py) ----------------------------------------------
@pytest.fixture
def fast_passwords(settings: Any) -> None:
    """A cheap password hasher: Basic auth checks the password on every request, and the
    default hasher takes ~0.3 s."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(fast_passwords: None) -> Any:
    return make_user("alice")


@pytest.fixture
def bob(fast_passwords: None) -> Any:
    return make_user("bob")


@pytest.fixture
def api(client: Client, alice: Any) -> ApiClient:
    """A client signed in as alice (session) whose every response is checked."""
    api = ApiClient(client)
    api.force_login(alice)
    return api


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """On the task-database leg (.ci/taskdb, tests/settings_taskdb.py) every database test
    may use both databases: the application's ("default") and the tasks' ("tasks")."""
    from django.conf import settings

    if "tasks" not in settings.DATABASES:
        return
    for item in items:
        marker = item.get_closest_marker("django_db")
        fixtures = getattr(item, "fixturenames", ())
        if marker is None and "db" not in fixtures and "transactional_db" not in fixtures:
            continue
        kwargs = {**marker.kwargs} if marker is not None else {}
        kwargs["databases"] = "__all__"
        item.add_marker(pytest.mark.django_db(*(marker.args if marker else ()), **kwargs), False)
