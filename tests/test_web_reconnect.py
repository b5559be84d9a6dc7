"""The web process answers the first request after PostgreSQL dropped its kept connection
(a restart, a failover, ``pg_terminate_backend``): the connection is checked before a
request reuses it (``CONN_HEALTH_CHECKS`` in the project's settings), not found dead by
the request's first query (a 500). Served by gunicorn as the image serves it: Django's
test client skips the checks around each request, and its live server opens a new
connection per request."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from batchtasks.services import tokens
from tests.workers import database_url, wait_for

ROOT = Path(__file__).resolve().parent.parent


def get(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


@pytest.fixture
def gunicorn(transactional_db: None, tmp_path: Path) -> Iterator[str]:
    """The project served by gunicorn (one process, one thread) on the test database."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
    }
    log = (tmp_path / "gunicorn.log").open("wb")
    argv = [sys.executable, "-m", "gunicorn", "project.wsgi", "-w", "1", "--threads", "1"]
    server = subprocess.Popen(
        [*argv, "-k", "gthread", "-b", f"127.0.0.1:{port}"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_a_request_after_the_server_dropped_the_kept_connection_is_answered(
    gunicorn: str,
) -> None:
    alice = get_user_model().objects.create_user("alice")
    token = tokens.issue(alice, "reconnect", "read", None).plaintext
    url = gunicorn + "/batchtasks/api/tasks/"
    headers = {"Authorization": f"Bearer {token}"}
    wait_for(lambda: get(url, headers) == 200, timeout=60)  # up; its connection is kept
    with connection.cursor() as cursor:  # every other session of this database goes
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )
        assert cursor.fetchone()[0] >= 1

    assert get(url, headers) == 200
