"""The runner in this process (no worker): fenced claims, result limits, plugin files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.db import connection

from batchtasks import BatchTask, BatchTaskPlugin, TaskState, batchtask
from batchtasks.core.plugin import LocalContext
from batchtasks.db.connections import close_state_connections
from batchtasks.models import BatchTaskAttempt
from batchtasks.worker import runner
from plugins.examples import Sleep
from tests.conftest import purge_queues, set_limit

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent


@batchtask("tests.big_result")
class BigResult(BatchTaskPlugin):
    def run(self, params: Any) -> str:
        return "x" * int(params["size"])


@pytest.fixture(autouse=True)
def _empty_queues() -> None:
    yield
    purge_queues(["batch.tests.big_result", "batch.examples.sleep"])


def test_a_result_over_the_limit_fails_the_attempt(settings) -> None:
    settings.BATCHTASKS = {**settings.BATCHTASKS, "MAX_RESULT_BYTES": 1000}
    small = BatchTask.submit("tests.big_result", {"size": 500})
    big = BatchTask.submit("tests.big_result", {"size": 1001})

    runner.execute(small.pk, 1, worker="inline@test")
    runner.execute(big.pk, 1, worker="inline@test")

    small.refresh_from_db()
    big.refresh_from_db()
    assert small.state == TaskState.SUCCEEDED and len(small.result) == 500
    assert big.state == TaskState.FAILED and big.result is None
    assert big.error.type == "batchtasks.core.exceptions.ResultTooLarge"
    assert "1,003 bytes" in big.error.message and "MAX_RESULT_BYTES" in big.error.message


def test_a_message_for_another_attempt_runs_nothing() -> None:
    task = BatchTask.submit("tests.big_result", {"size": 1})

    assert runner.execute(task.pk, 2, worker="inline@test") is None

    task.refresh_from_db()
    assert (task.state, task.attempt, task.started_at) == (TaskState.QUEUED, 1, None)
    assert not BatchTaskAttempt.objects.filter(task=task).exists()


def postgres_connections() -> set[tuple[str, int]]:
    """This process's open connections to PostgreSQL, by local address."""
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == 5432 and c.status == psutil.CONN_ESTABLISHED
    }


def test_outside_a_worker_no_second_database_connection_is_opened() -> None:
    set_limit("examples.sleep", 1)  # a dispatch pass on every submit
    close_state_connections()  # an earlier test's, in this thread
    connection.ensure_connection()
    # Others (an earlier test's thread in this process, say) are not this test's.
    before = postgres_connections()

    for _ in range(3):
        BatchTask.submit("examples.sleep", {})
    BatchTask.objects.first().cancel()  # and another pass

    assert postgres_connections() - before == set()


def test_example_plugins_record_only_under_media_root(settings, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"
    elsewhere = tmp_path / "elsewhere"

    Sleep(LocalContext(task_id=7)).run({"seconds": 0, "record": True, "record_dir": str(elsewhere)})

    assert not elsewhere.exists()
    lines = (tmp_path / "media" / "batchtasks" / "runs" / "7").read_text().split("\n")
    assert [line.split()[0] for line in lines if line] == ["start", "end"]


def start_project(env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE"))}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


SERVERS = {
    "web": "import project.wsgi",
    "worker": "from project.celery import app; app.loader.import_default_modules()",
}


@pytest.mark.parametrize("server", SERVERS)
def test_the_project_refuses_to_start_without_a_secret_key_in_production(
    tmp_path: Path, server: str
) -> None:
    run_dir = {"BATCHTASKS_RUN_DIR": str(tmp_path)}
    code = SERVERS[server]

    production = start_project(run_dir, code)
    development = start_project({**run_dir, "DJANGO_DEBUG": "1"}, code)
    configured = start_project({**run_dir, "DJANGO_SECRET_KEY": "x" * 50}, code)

    assert production.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in production.stderr
    assert development.returncode == 0, development.stderr
    assert configured.returncode == 0, configured.stderr


def test_manage_py_by_hand_is_development_without_a_key(tmp_path: Path) -> None:
    shown = start_project(
        {"BATCHTASKS_RUN_DIR": str(tmp_path)},
        "import sys; sys.argv = ['manage.py', 'diffsettings']; "
        "import runpy; runpy.run_path('manage.py', run_name='__main__')",
    )

    assert shown.returncode == 0, shown.stderr
    assert "DEBUG = True" in shown.stdout
