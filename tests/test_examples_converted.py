"""examples/converted (the Celery shop of examples/celery_app on batchtasks) runs as its
README says: migrate, a worker on its queue, and its script's receipt, chord, chain and
cancel, on the real PostgreSQL and Redis."""

from __future__ import annotations

import ast
import os
import sys
import uuid
from pathlib import Path

import pytest

from tests.projects import clear_prefix, drop_database, run, start_worker, stop

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.worker


def test_the_converted_shop_runs_on_a_worker(tmp_path: Path) -> None:
    name = f"shop_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    prefix = f"batchtasks-shop-{name}:"
    broker = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    # This run's own broker keys: a settings module over the example's.
    (tmp_path / "shop_test_settings.py").write_text(
        "from examples.converted.settings import *  # noqa: F403\n"
        f"CELERY_BROKER_TRANSPORT_OPTIONS = {{'global_keyprefix': {prefix!r}}}\n"
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "BATCHTASKS_REDIS_PREFIX")
    }
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
        "DJANGO_SETTINGS_MODULE": "shop_test_settings",
        "POSTGRES_DB": name,
        "CELERY_BROKER_URL": broker,
        "PYTHONUNBUFFERED": "1",
    }
    worker = None
    try:
        run(f"createdb -h 127.0.0.1 -U postgres {name}", ROOT, env)
        run("python -m django migrate", ROOT, env)
        worker = start_worker(
            "celery -A examples.converted worker -Q batch.shop -c 2 -n shop@%h -l INFO",
            ROOT,
            env,
            log=tmp_path / "worker.log",
        )
        out = run("python -m examples.converted.run", ROOT, env)
        printed = dict(line.split(" ", 1) for line in out.splitlines())
        assert ast.literal_eval(printed["receipt"]) == {"order": 7, "sent_to": "ann@example.com"}
        assert printed["total"] == "60"
        assert ast.literal_eval(printed["report"]) == {"month": 5, "rows": 10}
        assert printed["cancelled"] == "cancelled"
    finally:
        if worker is not None:
            stop(worker)
        drop_database(name)
        clear_prefix(broker, prefix)
