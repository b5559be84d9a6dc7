"""The test helpers for projects that use the app (``batchtasks.testing``): tasks run in
the test's process through the worker's own steps, or are captured without running."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import tomllib
from datetime import timedelta
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from batchtasks import BatchTask, BatchTaskPlugin, TaskState, batchtask
from batchtasks.backends.django_tasks import TaskResultStatus
from batchtasks.models import BatchTaskAttempt
from batchtasks.testing import capture_tasks, run_tasks
from batchtasks.testing.running import WORKER
from tests import django_task_functions as functions
from tests.conftest import purge_queues

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = "batchtasks.testing.pytest_plugin"
SAMPLE = "tests/sample_app/check_orders.py"
#: Set per pytest process by tests/settings.py: a nested pytest must choose its own.
SESSION_ENV = {"BATCHTASKS_TEST_DB_NAME", "BATCHTASKS_REDIS_PREFIX"}
QUEUES = ["batch.tests.testing.echo", "batch.tests.testing.flaky"]


@batchtask("tests.testing.echo")
class Echo(BatchTaskPlugin):
    """Say how its own row looked while it ran, and what it was given."""

    def run(self, params: Any) -> dict[str, Any]:
        row = self.task
        return {"state": row.state, "worker": row.worker, "params": params, "pid": os.getpid()}


@batchtask("tests.testing.boom", max_attempts=1)
class Boom(BatchTaskPlugin):
    def run(self, params: Any) -> None:
        raise ValueError(f"boom {params['n']}")


@batchtask("tests.testing.flaky", max_attempts=3, retry_backoff=3600)
class FailsFirst(BatchTaskPlugin):
    def run(self, params: Any) -> int:
        if self.attempt == 1:
            raise ConnectionError("first attempt fails")
        return self.attempt


@batchtask("tests.testing.one_at_a_time", max_concurrency=1)
class OneAtATime(BatchTaskPlugin):
    """How many tasks of its type run beside it (itself included), and how deep the
    stack is."""

    def run(self, params: Any) -> dict[str, int]:
        running = BatchTask.objects.filter(definition__name=self.task.type_name, state="running")
        return {"beside": running.count(), "depth": len(inspect.stack(0))}


@batchtask("tests.testing.isolated", isolation="process")
class Isolated(BatchTaskPlugin):
    """Its process, and whether it sees a user the test has not committed."""

    def run(self, params: Any) -> dict[str, Any]:
        return {"pid": os.getpid(), "sees": User.objects.filter(username=params).exists()}


def attempts(task: BatchTask) -> list[tuple[int, str, str]]:
    rows = BatchTaskAttempt.objects.filter(task=task).order_by("number")
    return [(a.number, a.outcome, a.worker) for a in rows]


@pytest.mark.django_db(transaction=True)
def test_a_task_runs_at_commit_through_a_workers_states() -> None:
    with run_tasks() as runner:
        task = BatchTask.submit("tests.testing.echo", {"x": 1})
        task.refresh_from_db()
        assert task.state == TaskState.SUCCEEDED, "ran at commit, before the block ended"

    assert task.result == {
        "state": "running",
        "worker": WORKER,
        "params": {"x": 1},
        "pid": os.getpid(),
    }
    assert task.started_at is not None and task.finished_at is not None
    assert task.progress_percent == 100
    assert attempts(task) == [(1, "succeeded", WORKER)]
    assert runner.types == ["tests.testing.echo"]


@pytest.mark.django_db(transaction=True)
def test_a_django_task_function_runs_and_django_reads_its_result() -> None:
    with run_tasks():
        added = functions.add.enqueue(2, b=3)
        exploded = functions.explode.enqueue("on fire")

    added.refresh()
    exploded.refresh()
    assert (added.status, added.return_value) == (TaskResultStatus.SUCCESSFUL, 5)
    assert exploded.status == TaskResultStatus.FAILED
    assert exploded.errors[-1].exception_class_path.endswith("PrinterOnFire")


@pytest.mark.django_db(transaction=True)
def test_a_failing_task_ends_failed_with_its_error() -> None:
    with run_tasks():
        task = BatchTask.submit("tests.testing.boom", {"n": 7})

    task.refresh_from_db()
    assert task.state == TaskState.FAILED
    assert (task.error.type, task.error.message) == ("ValueError", "boom 7")
    assert attempts(task) == [(1, "failed", WORKER)]


@pytest.mark.django_db(transaction=True)
def test_a_retry_waits_for_its_backoff_and_runs_when_due() -> None:
    with run_tasks() as runner:
        task = BatchTask.submit("tests.testing.flaky")
        task.refresh_from_db()
        assert (task.state, task.attempt) == (TaskState.NEW, 2)
        assert runner.run_due() == [], "its backoff (an hour) has not passed"

        # An hour later, as far as the task can tell: its run_after has passed.
        passed = timezone.now() - timedelta(seconds=1)
        BatchTask.objects.filter(pk=task.pk).update(run_after=passed)
        ran = runner.run_due()

    task.refresh_from_db()
    assert [t.pk for t in ran] == [task.pk]
    assert (task.state, task.result) == (TaskState.SUCCEEDED, 2)
    assert attempts(task) == [(1, "failed", WORKER), (2, "succeeded", WORKER)]


@pytest.mark.django_db(transaction=True)
def test_tasks_freed_by_a_finish_run_one_after_another_without_recursion() -> None:
    with run_tasks():
        with transaction.atomic():
            tasks = [BatchTask.submit("tests.testing.one_at_a_time") for _ in range(4)]
        for task in tasks:
            task.refresh_from_db()

    assert {t.state for t in tasks} == {TaskState.SUCCEEDED}
    assert [t.result["beside"] for t in tasks] == [1, 1, 1, 1], "its limit is 1"
    assert len({t.result["depth"] for t in tasks}) == 1, "each ran from the same frame"


@pytest.mark.django_db(transaction=True)
def test_a_task_cancelled_before_commit_does_not_run() -> None:
    with run_tasks(), transaction.atomic():
        task = BatchTask.submit("tests.testing.echo")
        assert task.cancel()

    task.refresh_from_db()
    assert (task.state, task.started_at) == (TaskState.CANCELLED, None)
    assert attempts(task) == []


@pytest.mark.django_db
def test_in_a_test_transaction_tasks_run_when_run_due_is_called() -> None:
    with run_tasks() as runner:
        tasks = [BatchTask.submit("tests.testing.one_at_a_time") for _ in range(3)]
        added = functions.add.enqueue(1, 1)
        assert {t.state for t in runner.tasks} <= {TaskState.NEW, TaskState.QUEUED}

        ran = runner.run_due()

    assert sorted(t.pk for t in ran) == sorted([*(t.pk for t in tasks), int(added.id)])
    assert {t.state for t in ran} == {TaskState.SUCCEEDED}
    limited = [t.result["beside"] for t in ran if t.type_name == "tests.testing.one_at_a_time"]
    assert limited == [1, 1, 1], "its limit is 1"


@pytest.mark.django_db
def test_on_commit_callbacks_run_by_django_run_the_tasks_in_a_test_transaction(
    django_capture_on_commit_callbacks,
) -> None:
    with run_tasks(run_on_exit=False):
        with django_capture_on_commit_callbacks(execute=True):
            task = BatchTask.submit("tests.testing.echo", "hello")
        task.refresh_from_db()

    assert (task.state, task.result["params"]) == (TaskState.SUCCEEDED, "hello")


@pytest.mark.django_db
def test_a_process_isolated_type_runs_in_the_test_process_and_transaction() -> None:
    User.objects.create(username="not-committed")

    with run_tasks() as runner:
        task = BatchTask.submit("tests.testing.isolated", "not-committed")

    task.refresh_from_db()
    assert runner.tasks == [task]
    assert task.state == TaskState.SUCCEEDED
    assert task.result == {"pid": os.getpid(), "sees": True}


@pytest.mark.django_db
def test_an_executor_type_runs_its_program() -> None:
    with run_tasks():
        task = BatchTask.submit("examples.program", {"steps": 2, "result": "made it"})

    task.refresh_from_db()
    assert task.state == TaskState.SUCCEEDED, task.error
    assert "made it" in str(task.result)
    assert attempts(task) == [(1, "succeeded", WORKER)]


@pytest.mark.django_db
def test_running_tasks_leaves_the_test_process_own_sigterm_handler() -> None:
    def mine(signum: int, frame: Any) -> None:
        return None

    saved = signal.signal(signal.SIGTERM, mine)
    try:
        with run_tasks():
            BatchTask.submit("tests.testing.echo")
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, saved)


@pytest.mark.django_db(transaction=True)
def test_capture_sees_type_and_params_and_runs_nothing() -> None:
    purge_queues(QUEUES)

    with capture_tasks() as captured:
        BatchTask.submit("tests.testing.echo", {"to": "ann"})
        functions.add.enqueue(1, b=2)
    BatchTask.submit("tests.testing.echo", "after the block")

    assert captured.types == ["tests.testing.echo", "tests.django_task_functions.add"]
    assert captured.params == [{"to": "ann"}, {"args": [1], "kwargs": {"b": 2}}]
    assert [q for q, _ in captured.runs] == [
        "batch.tests.testing.echo",
        "batch.tests.django_task_functions.add",
    ]
    assert {t.state for t in captured.tasks} <= {TaskState.NEW, TaskState.QUEUED}
    assert not BatchTaskAttempt.objects.exists()
    purge_queues(QUEUES)  # the one submitted after the block went to the broker


@pytest.mark.django_db(transaction=True)
def test_capture_sends_nothing_to_the_broker() -> None:
    from project.celery import app

    purge_queues(QUEUES)
    with capture_tasks() as captured:
        BatchTask.submit("tests.testing.echo")

    with app.connection_for_write() as conn:
        assert conn.default_channel.queue_purge("batch.tests.testing.echo") == 0
    assert len(captured) == 1 and len(captured.runs) == 1


@pytest.mark.django_db
def test_captured_tasks_run_when_a_runner_runs_what_is_due() -> None:
    with capture_tasks() as captured:
        task = BatchTask.submit("tests.testing.echo", 1)

    with run_tasks():
        pass

    task.refresh_from_db()
    assert captured.types == ["tests.testing.echo"]
    assert task.state == TaskState.SUCCEEDED


def test_the_pytest11_entry_point_names_the_plugin_with_the_fixtures() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [(name, module)] = project["project"]["entry-points"]["pytest11"].items()
    plugin = import_module(module)

    assert name == module, "so that -p or pytest_plugins naming the module too is no error"
    assert callable(plugin.batchtasks_run) and callable(plugin.batchtasks_capture)


def test_the_installed_distribution_loads_the_plugin() -> None:
    found = entry_points(group="pytest11", name=PLUGIN)
    if not found:
        pytest.skip("the project is not installed in this environment (make venv installs it)")

    assert [ep.load().__name__ for ep in found] == [PLUGIN]


def test_the_plugin_imports_before_django_is_set_up() -> None:
    code = (
        "import sys, batchtasks.testing.pytest_plugin; "
        "sys.exit(any(m in sys.modules for m in ('batchtasks.models', 'django.contrib.auth')))"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)


def test_a_projects_tests_pass_with_only_the_plugins_fixtures() -> None:
    # A pytest of its own, with its own test database and Redis prefix.
    env = {k: v for k, v in os.environ.items() if k not in SESSION_ENV}
    finished = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", PLUGIN, SAMPLE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "3 passed" in finished.stdout
