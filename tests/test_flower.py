"""Flower and ``celery inspect`` tell the truth about batch tasks: their type, and the
state their row ended in (a real Flower and real workers sending events with ``-E``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchtasks import BatchTask, TaskState
from batchtasks.transport.publish import message_id
from tests.workers import ROOT, database_url, wait_for

pytestmark = pytest.mark.worker

QUEUES = ["batch.examples.noop", "batch.examples.fail", "batch.examples.flaky"]
QUEUES += ["batch.examples.sleep"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def celery_env() -> dict[str, str]:
    """The environment of the test's workers: the same database and broker."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    return {**env, "DATABASE_URL": database_url()}


class Flower:
    """A ``celery flower`` process on a free port, with its API open."""

    def __init__(self, log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = log_path
        command = [sys.executable, "-m", "celery", "-A", "project", "flower"]
        command += ["--address=127.0.0.1", f"--port={self.url.rsplit(':', 1)[1]}"]
        env = {**celery_env(), "FLOWER_UNAUTHENTICATED_API": "1"}
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def answers(self) -> bool:
        assert self.process.poll() is None, self.log_path.read_text()[-4000:]
        try:
            return self.get("/api/tasks") is not None
        except (urllib.error.URLError, ConnectionError):
            return False

    def task(self, task_id: int, attempt: int) -> dict[str, Any]:
        return self.get("/api/tasks").get(message_id(task_id, attempt)) or {}

    def state_of(self, task_id: int, attempt: int) -> str | None:
        return self.task(task_id, attempt).get("state")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def flower(tmp_path: Path) -> Iterator[Flower]:
    server = Flower(tmp_path / "flower.log")
    try:
        wait_for(server.answers, timeout=60, interval=0.2)
        yield server
    finally:
        server.stop()


def listening(flower: Flower) -> None:
    """Wait until Flower receives the worker's events (it subscribes after it answers)."""

    def seen() -> bool:
        task = BatchTask.submit("examples.noop", {})
        wait_for(lambda: BatchTask.objects.get(pk=task.pk).state == TaskState.SUCCEEDED, 60)
        return flower.state_of(task.pk, 1) == "SUCCESS"

    wait_for(seen, timeout=60, interval=0.5)


def settled(flower: Flower, expected: dict[tuple[int, int], str]) -> bool:
    tasks = flower.get("/api/tasks")
    return all(
        tasks.get(message_id(*key), {}).get("state") == state for key, state in expected.items()
    )


def test_flower_shows_each_batch_task_with_its_type_and_the_state_its_row_ended_in(
    start_worker, flower: Flower
) -> None:
    worker = start_worker("w1", QUEUES, concurrency=2, extra_args=["-E"])
    listening(flower)
    ok = BatchTask.submit("examples.noop", {})
    failed = BatchTask.submit("examples.fail", {"message": "the printer is on fire"})
    flaky = BatchTask.submit("examples.flaky", {})
    cancelled = BatchTask.submit("examples.sleep", {"seconds": 60})
    wait_for(lambda: BatchTask.objects.get(pk=cancelled.pk).state == TaskState.RUNNING, 60)
    cancelled.cancel()
    expected = {
        (ok.pk, 1): "SUCCESS",
        (failed.pk, 1): "FAILURE",
        (flaky.pk, 1): "RETRY",
        (flaky.pk, 2): "SUCCESS",
        (cancelled.pk, 1): "REVOKED",
    }
    wait_for(lambda: settled(flower, expected), timeout=120, interval=0.5)

    rows = BatchTask.objects.filter(pk__in=[t.pk for t in (ok, failed, flaky, cancelled)])
    assert dict(rows.values_list("pk", "state")) == {
        ok.pk: TaskState.SUCCEEDED,
        failed.pk: TaskState.FAILED,
        flaky.pk: TaskState.SUCCEEDED,
        cancelled.pk: TaskState.CANCELLED,
    }, "the rows still hold the outcome"
    assert dict(rows.values_list("pk", "attempt"))[failed.pk] == 1, "a failure is not retried"
    assert not rows.filter(lost_runs__gt=0).exists(), "no run was taken for lost"
    failure = flower.task(failed.pk, 1)
    assert "ValueError: the printer is on fire" in failure["exception"]
    assert "the far end did not answer" in flower.task(flaky.pk, 1)["exception"]
    assert "examples.fail" in failure["kwargs"]
    assert "examples.sleep" in flower.task(cancelled.pk, 1)["kwargs"]
    assert worker.hostname in flower.get("/api/workers?refresh=1")
    assert worker.log_count("Requeu") == 0 and worker.log_count("reject") == 0


def test_celery_inspect_active_names_the_batch_task_and_its_type(start_worker) -> None:
    start_worker("w1", ["batch.examples.sleep"], concurrency=1)
    task = BatchTask.submit("examples.sleep", {"seconds": 60})
    wait_for(lambda: BatchTask.objects.get(pk=task.pk).state == TaskState.RUNNING, 60)

    command = [sys.executable, "-m", "celery", "-A", "project", "inspect", "active"]
    done = subprocess.run(
        command,
        cwd=ROOT,
        env=celery_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert message_id(task.pk, 1) in done.stdout, done.stdout + done.stderr
    assert "examples.sleep" in done.stdout
    task.cancel()
