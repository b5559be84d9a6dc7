"""``manage.py batchtasks``."""

from __future__ import annotations

import shlex
import subprocess
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from batchtasks.models import BatchQueue, BatchTaskDefinition

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
    every_queue = (
        "batch.examples.fail,batch.examples.flaky,batch.examples.merge,batch.examples.noop,"
    )
    assert f"-Q {every_queue}" in out


def test_workers_shows_live_limits_from_the_database() -> None:
    run("sync")
    BatchTaskDefinition.objects.filter(name="reports.users_csv").update(max_concurrency=5)

    assert "-Q batch.reports -c 5 " in run("workers")


def hostile_queue(tmp_path: Path) -> str:
    """A queue name no form accepts: a newline, spaces, quotes, a command substitution."""
    return f"batch.x\n  evil: 1 'q\" $(touch {tmp_path}/pwned) `touch {tmp_path}/pwned`;"


def printed_commands(text: str, shell: Path) -> list[list[str]]:
    """The argv of every command line ``batchtasks workers`` printed, as bash runs them:
    ``celery`` is a function that writes its arguments to ``shell``'s neighbour file."""
    lines = text.split("Worker command lines", 1)[1].split("\n", 1)[1]
    per_queue, everything = lines.split("Or one worker for every batch queue:")
    out = shell.with_suffix(".argv")
    shell.write_text(
        f"celery() {{ printf '%s\\0' \"$@\" >> {shlex.quote(str(out))}; printf '\\n' >> "
        f"{shlex.quote(str(out))}; }}\n{per_queue}\n{everything}\n"
    )
    subprocess.run(["bash", str(shell)], check=True, timeout=30)
    runs = out.read_text().split("\0\n")[:-1]
    return [["celery", *run.split("\0")] for run in runs]


def test_command_lines_quote_a_hostile_queue_name_that_bypassed_validation(
    tmp_path: Path,
) -> None:
    run("sync")
    hostile = hostile_queue(tmp_path)
    BatchTaskDefinition.objects.filter(name="reports.users_csv").update(queue=hostile)
    BatchQueue.objects.create(name=hostile)  # as raw SQL or an older version could

    out = run("workers")

    commands = printed_commands(out, tmp_path / "commands.sh")
    assert not (tmp_path / "pwned").exists()
    node = hostile.replace(".", "-") + "@%h"
    assert [
        "celery", "-A", "project", "worker", "-Q", hostile, "-c", "2",
        "--prefetch-multiplier", "1", "-n", node,
    ] in commands  # fmt: skip
    assert hostile in commands[-1][commands[-1].index("-Q") + 1].split(",")
    assert all(shlex.split(shlex.join(argv)) == argv for argv in commands)
    assert f"{hostile!r}  (queue limit: unlimited)" in out  # on one line, escaped


def test_dispatch_refuses_unknown_queues() -> None:
    run("sync")
    with pytest.raises(CommandError, match=r"'batch\.nope'"):
        run("dispatch", "batch.nope")
    assert "Dispatched 0 tasks." in run("dispatch", "batch.reports")
