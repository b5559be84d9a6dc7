"""The package as users get it: ``python -m build`` makes a wheel named django-batchtasks
that holds the app (templates, static files, migrations) and nothing else, and a fresh
virtualenv with only that wheel runs a minimal project: migrate, submit, a worker runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.workers import ROOT

pytestmark = pytest.mark.worker

PROJECT_FILES = {
    "manage.py": """\
        import os, sys
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mini.settings")
        from django.core.management import execute_from_command_line
        execute_from_command_line(sys.argv)
        """,
    "mini/__init__.py": "from .celery import app\n",
    "mini/celery.py": """\
        import os
        from celery import Celery
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mini.settings")
        app = Celery("mini")
        app.config_from_object("django.conf:settings", namespace="CELERY")
        """,
    "mini/settings.py": """\
        from pathlib import Path
        HERE = Path(__file__).resolve().parent.parent
        SECRET_KEY = "wheel-test"
        USE_TZ = True
        INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "batchtasks"]
        DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                                 "NAME": HERE / "db.sqlite3"}}
        BATCHTASKS = {"PLUGINS": ["mini.tasks"]}
        CELERY_BROKER_URL = "filesystem://"
        _queue = HERE / "broker"
        for _sub in ("queue", "control"):
            (_queue / _sub).mkdir(parents=True, exist_ok=True)
        CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": str(_queue / "queue"),
            "data_folder_out": str(_queue / "queue"), "control_folder": str(_queue / "control")}
        CELERY_WORKER_PREFETCH_MULTIPLIER = 1
        """,
    "mini/tasks.py": """\
        from batchtasks import BatchTaskPlugin, batchtask

        @batchtask("mini.hello")
        class Hello(BatchTaskPlugin):
            def run(self, params):
                self.progress(50, "halfway")
                return {"hello": params["name"]}
        """,
}


def tracked_and_new_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return [name for name in listed if (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The sdist and wheel built from a copy of the repository's files."""
    source = tmp_path_factory.mktemp("source")
    for name in tracked_and_new_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes((ROOT / name).read_bytes())
    out = source / "dist"
    build = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), "."]
    subprocess.run(build, cwd=source, check=True, capture_output=True)
    yield out


def wheel_of(dist: Path) -> Path:
    (wheel,) = dist.glob("django_batchtasks-*-py3-none-any.whl")
    return wheel


def test_the_wheel_holds_the_app_with_its_templates_static_files_and_migrations(
    dist: Path,
) -> None:
    names = zipfile.ZipFile(wheel_of(dist)).namelist()

    top = {name.split("/")[0] for name in names}
    assert top == {"batchtasks", f"{wheel_of(dist).name.rsplit('-', 3)[0]}.dist-info"}
    assert "batchtasks/migrations/0001_initial.py" in names
    assert "batchtasks/static/batchtasks/indicator.js" in names
    assert "batchtasks/templates/admin/batchtasks/batchtask/change_list.html" in names
    assert "batchtasks/py.typed" in names
    assert not [n for n in names if n.startswith(("project/", "plugins/", "tests/"))]


def test_twine_accepts_both_distributions(dist: Path) -> None:
    files = [str(path) for path in dist.iterdir()]
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files],
        capture_output=True,
        text=True,
        check=False,
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2


def test_a_fresh_virtualenv_with_only_the_wheel_runs_a_task(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = [python, "-m", "pip", "install", "--quiet", str(wheel_of(dist))]
    subprocess.run(install, check=True, capture_output=True)
    project = tmp_path / "site"
    for name, text in PROJECT_FILES.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(textwrap.dedent(text))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    env["PYTHONPATH"] = str(project)  # the project only: nothing of this repository
    env["DJANGO_SETTINGS_MODULE"] = "mini.settings"

    def run(*args: str) -> str:
        done = subprocess.run(
            [python, *args], cwd=project, env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def django(code: str) -> str:
        return run("-c", f"import django; django.setup(); from batchtasks import BatchTask; {code}")

    run("manage.py", "migrate", "--verbosity", "0")
    task_id = django("print(BatchTask.submit('mini.hello', {'name': 'wheel'}).pk)")
    celery = [str(venv / "bin" / "celery"), "-A", "mini", "worker", "-Q", "batch.mini.hello"]
    worker = subprocess.Popen(
        [*celery, "-c", "1"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        read = f"t = BatchTask.objects.get(pk={task_id}); print(t.state, t.result)"
        deadline = time.monotonic() + 120
        while (state := django(read)).startswith(("new", "queued", "running")):
            assert time.monotonic() < deadline, f"task {task_id} still {state}"
            time.sleep(0.5)
    finally:
        worker.terminate()
        worker.wait(30)

    assert state == "succeeded {'hello': 'wheel'}"
    imported = run("-c", "import batchtasks; print(batchtasks.__file__)")
    assert imported.startswith(str(venv))  # the wheel's copy, not this repository's
