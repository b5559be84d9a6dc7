"""The tutorial (docs/tutorial/index.md) works as written: its files and shell commands,
in order, in an empty folder, against the real PostgreSQL and Redis, with a real worker.

Lines that set up the reader's own machine are left out (the virtual environment and the
install: this test runs in an environment that has batchtasks; the development server:
the page is fetched through Django's test client instead). The broker gets a key prefix
of its own, as every test run does.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.projects import clear_prefix, drop_database, run, start_worker, stop

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial" / "index.md"
BLOCK = re.compile(r'^```(\w+)(?: title="([^"]+)")?\n(.*?)^```$', re.MULTILINE | re.DOTALL)
SKIPPED = ("python3 -m venv", "source .venv", "pip install", "python manage.py runserver")
WORKER = "celery -A mysite worker"
APPEND = " (add at the end)"

pytestmark = pytest.mark.worker


def steps() -> list[tuple[str, str, str]]:
    """("file", path, text) and ("sh", "", commands), in the page's order."""
    found = []
    for lang, title, body in BLOCK.findall(TUTORIAL.read_text()):
        if title:
            found.append(("file", title, body))
        elif lang == "sh":
            found.append(("sh", "", body))
    return found


def test_the_tutorial_has_files_and_commands() -> None:
    kinds = [kind for kind, _, _ in steps()]
    assert kinds.count("file") >= 6
    assert any(WORKER in body for _, _, body in steps())


def write(folder: Path, title: str, text: str) -> None:
    path = folder / title.removesuffix(APPEND)
    path.parent.mkdir(parents=True, exist_ok=True)
    if title.endswith(APPEND):
        text = path.read_text() + "\n" + text
    path.write_text(text)


CHECK_PAGE = """
from django.contrib.auth.models import User
from django.test import Client
from batchtasks import BatchTask
client = Client(HTTP_HOST="localhost")  # the host runserver answers as
client.force_login(User.objects.get(username="admin"))
answer = client.post("/", {"text": "one two three"})
assert answer.status_code == 302, answer.status_code
task = BatchTask.objects.latest("id").wait(timeout=60)
assert task.state == "succeeded" and task.result == {"words": 3}, (task.state, task.error)
page = client.get("/").content.decode()
assert 'id="batchtasks-indicator"' in page, page
active = client.get("/batchtasks/api/tasks/active/").json()
assert any(t["id"] == task.id for t in active["tasks"]), active
print("page ok", task.id)
"""


def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    name = f"tutorial_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    prefix = f"batchtasks-tutorial-{name}:"
    broker = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "BATCHTASKS_REDIS_PREFIX")
    }
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "POSTGRES_DB": name,
        "CELERY_BROKER_URL": broker,
        # The checkout stands for the tutorial's `pip install`: the legs whose virtualenv
        # does not install the project (the newest Django's) import it from here.
        "PYTHONPATH": os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT)])),
        "PYTHONUNBUFFERED": "1",
    }
    workers: list[subprocess.Popen[bytes]] = []
    outputs: list[str] = []
    try:
        for kind, title, body in steps():
            if kind == "file":
                write(tmp_path, title, body)
                if title.startswith("mysite/settings.py"):
                    # This run's own broker keys (the harness, not the tutorial).
                    options = {"global_keyprefix": prefix}
                    line = f"CELERY_BROKER_TRANSPORT_OPTIONS = {options!r}\n"
                    write(tmp_path, "mysite/settings.py" + APPEND, line)
                continue
            for line in body.splitlines():
                if not line.strip() or line.startswith(SKIPPED):
                    continue
                if line.startswith(WORKER):
                    workers.append(start_worker(line, tmp_path, env))
                else:
                    outputs.append(run(line, tmp_path, env))
        assert workers, "the tutorial starts no worker"
        assert "Task 1 succeeded" in "".join(outputs)
        assert "reports.word_count" in "".join(outputs)
        check = f"python manage.py shell -c {shlex.quote(CHECK_PAGE)}"
        assert "page ok" in run(check, tmp_path, env)
    finally:
        for worker in workers:
            stop(worker)
        drop_database(name)
        clear_prefix(broker, prefix)
