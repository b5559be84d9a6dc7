"""``manage.py batchtasks``."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from batchtasks.models import BatchTaskDefinition

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command("batchtasks", *args, stdout=out)
    return out.getvalue()


def test_workers_prints_the_matrix_and_the_command_lines() -> None:
    BatchTaskDefinition.objects.all().delete()
    out = run("workers")

    assert "batch.reports  (queue limit: unlimited)" in out
    assert "reports.users_csv" in out and "max_concurrency=2" in out
    assert "celery -A project worker -Q batch.reports -c 2 --prefetch-multiplier 1" in out
    assert "-Q batch.examples.fail,batch.examples.flaky,batch.examples.noop," in out


def test_workers_shows_live_limits_from_the_database() -> None:
    run("sync")
    BatchTaskDefinition.objects.filter(name="reports.users_csv").update(max_concurrency=5)

    assert "-Q batch.reports -c 5 " in run("workers")


def test_dispatch_refuses_unknown_queues() -> None:
    run("sync")
    with pytest.raises(CommandError, match=r"'batch\.nope'"):
        run("dispatch", "batch.nope")
    assert "Dispatched 0 task(s)." in run("dispatch", "batch.reports")
