"""``manage.py batchtasks`` for tasks: submit and watch it in a real terminal, list, show,
cancel, retry and stats against real rows and workers, and one clear line for every bad
input, with nothing written."""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from batchtasks import BatchTask, TaskState
from tests.workers import ROOT, Worker, database_url, wait_for

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
QUEUES = ["batch.examples.progress", "batch.examples.fail", "batch.examples.sleep"]


def run(*args: str) -> str:
    out = StringIO()
    call_command("batchtasks", *args, stdout=out)
    return out.getvalue()


def refused(*args: str) -> str:
    """The one line a command refuses with; nothing may have been written."""
    before = BatchTask.objects.count()
    with pytest.raises(CommandError) as info:
        run(*args)
    assert BatchTask.objects.count() == before
    message = str(info.value)
    assert message and "\n" not in message
    return message


def command_env() -> dict[str, str]:
    """The environment of ``manage.py`` run by hand on the test database."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONUNBUFFERED": "1"}
    env["DATABASE_URL"] = database_url()
    env["TERM"] = "xterm-256color"
    for name in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS"):
        env.pop(name, None)
    return env


class Terminal:
    """``manage.py batchtasks …`` in a real pseudo-terminal, its output read as it comes."""

    def __init__(self, *args: str) -> None:
        # A shell starts background jobs with SIGINT ignored, and children inherit that:
        # the command must get its Ctrl-C however this suite was started.
        if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        self.master, slave = os.openpty()
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "batchtasks", *args], cwd=ROOT, env=command_env(),
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        self.raw = b""

    @property
    def text(self) -> str:
        """What the terminal received, without its escape sequences."""
        return ANSI.sub("", self.raw.decode(errors="replace")).replace("\r", "\n")

    def read(self) -> bool:
        """Read what is there; False once the program has closed the terminal."""
        if select.select([self.master], [], [], 0.1)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every copy of the terminal's other end is closed
                chunk = b""
            self.raw += chunk
            return bool(chunk)
        return True

    def read_until(self, predicate: Callable[[str], object], timeout: float = 60.0) -> None:
        wait_for(lambda: (self.read() or True) and predicate(self.text), timeout, 0.01)

    def finish(self, timeout: float = 120.0) -> int:
        """Read to the end; the exit code."""
        deadline = time.monotonic() + timeout  # a guard against a hang, not a timing check
        while self.read() and time.monotonic() < deadline:
            pass
        os.close(self.master)
        return self.process.wait(30)


def submitted_id(text: str) -> int:
    found = re.search(r"Task (\d+) \(\S+\) submitted", text)
    assert found, text
    return int(found.group(1))


@pytest.mark.worker
def test_submit_wait_in_a_terminal_shows_the_bar_advance_then_succeeds(
    start_worker: Callable[..., Worker],
) -> None:
    start_worker(queues=QUEUES)
    terminal = Terminal(
        "submit", "examples.progress", "--params", '{"steps": 10, "delay": 0.3}', "--wait"
    )
    code = terminal.finish()
    text = terminal.text

    task = BatchTask.objects.get(pk=submitted_id(text))
    assert code == 0, text
    assert task.state == TaskState.SUCCEEDED
    assert "━" in text  # a drawn bar, not the plain lines of a pipe
    shown = {int(p) for p in re.findall(r"\b(\d{1,3})%", text)}
    assert any(0 < p < 100 for p in shown) and 100 in shown, text
    assert re.search(r"step \d+ of 10", text)
    assert re.search(rf'Task {task.pk} succeeded in \d+ s; result: {{"steps": 10}}', text), text


@pytest.mark.worker
def test_submit_wait_for_a_failing_task_exits_non_zero_with_its_error(
    start_worker: Callable[..., Worker],
) -> None:
    start_worker(queues=QUEUES)
    terminal = Terminal("submit", "examples.fail", "--params", '{"message": "no disk"}', "--wait")
    code = terminal.finish()
    text = terminal.text

    task_id = submitted_id(text)
    assert code != 0
    assert f"Task {task_id} failed: ValueError: no disk" in text
    assert BatchTask.objects.get(pk=task_id).state == TaskState.FAILED


@pytest.mark.worker
def test_ctrl_c_stops_the_waiting_and_leaves_the_task_running(
    start_worker: Callable[..., Worker],
) -> None:
    start_worker(queues=QUEUES)
    terminal = Terminal("submit", "examples.sleep", "--params", '{"seconds": 120}', "--wait")
    terminal.read_until(lambda text: "running" in text)
    os.kill(terminal.process.pid, signal.SIGINT)
    code = terminal.finish()
    task = BatchTask.objects.get(pk=submitted_id(terminal.text))

    assert code == 130
    assert f"Stopped waiting; task {task.pk} goes on (running)" in terminal.text
    assert task.state == TaskState.RUNNING
    assert "cancelled." not in run("cancel", str(task.pk))  # a running task is asked to stop


@pytest.mark.worker
def test_submit_wait_without_a_terminal_prints_plain_lines(
    start_worker: Callable[..., Worker],
) -> None:
    start_worker(queues=QUEUES)
    out = run("submit", "examples.progress", "--params", '{"steps": 4, "delay": 0.3}', "--wait")
    lines = out.splitlines()
    task_id = submitted_id(lines[0])

    assert "\x1b" not in out and "━" not in out
    assert f"Task {task_id}: running" in out
    assert lines[-1].startswith(f"Task {task_id} succeeded in ")
    assert lines[-1].endswith('result: {"steps": 4}')


@pytest.mark.worker
def test_list_show_and_retry_tell_what_the_workers_did(
    start_worker: Callable[..., Worker],
) -> None:
    start_worker(queues=QUEUES)
    failed = [int(run("submit", "examples.fail", "--params", '{"message": "boom"}')) for _ in "ab"]
    BatchTask.submit("examples.sleep", {"seconds": 1}, run_after=timedelta(hours=1))
    wait_for(lambda: BatchTask.objects.filter(state=TaskState.FAILED).count() == 2, 60)

    listed = run("list", "--state", "failed", "--type", "examples.fail")
    assert [(int(row[0]), row[2]) for row in table_rows(listed)] == [
        (failed[1], "failed"),
        (failed[0], "failed"),
    ]
    assert run("retry", str(failed[0])) == f"Task {failed[0]}: will run again as attempt 2.\n"
    wait_for(lambda: BatchTask.objects.get(pk=failed[0]).attempts.count() == 2, 60)
    wait_for(lambda: BatchTask.objects.get(pk=failed[0]).state == TaskState.FAILED, 60)
    shown = run("show", str(failed[0]))
    assert f"Task {failed[0]}: examples.fail, failed" in shown
    assert '"message": "boom"' in shown and "ValueError: boom" in shown
    assert "Traceback" in shown
    attempts = [(row[0], row[1], row[2].split("@")[0]) for row in table_rows(shown)]
    assert attempts == [("1", "failed", "w1"), ("2", "failed", "w1")]


@pytest.mark.worker
def test_stats_count_what_runs_waits_and_ended_per_queue(
    start_worker: Callable[..., Worker],
) -> None:
    start_worker(queues=QUEUES)
    for _ in "ab":
        BatchTask.submit("examples.fail", {"message": "boom"})
    BatchTask.submit("examples.sleep", {"seconds": 1}, run_after=timedelta(hours=1))
    running = BatchTask.submit("examples.sleep", {"seconds": 120})
    BatchTask.submit("examples.noop", {})  # no worker takes batch.examples.noop
    wait_for(lambda: BatchTask.objects.filter(state=TaskState.FAILED).count() == 2, 60)
    wait_for(lambda: BatchTask.objects.get(pk=running.pk).state == TaskState.RUNNING, 60)

    rows = {row[0]: row[1:] for row in table_rows(run("stats"))}

    # limit, running, queued, waiting (n not due yet), oldest wait, ended 1 h, failed 1 h
    assert rows["batch.examples.fail"] == ["unlimited", "0", "0", "0", "-", "2", "2"]
    assert rows["batch.examples.sleep"] == ["unlimited", "1", "0", "1 (1 later)", "-", "0", "0"]
    assert rows["batch.examples.noop"][1:4] == ["0", "1", "0"]
    assert rows["all queues"][1:4] == ["1", "1", "1 (1 later)"]
    assert run("cancel", str(running.pk)) == (
        f"Task {running.pk}: running; asked to stop (it ends as cancelled once its worker "
        "sees it).\n"
    )
    wait_for(lambda: BatchTask.objects.get(pk=running.pk).state == TaskState.CANCELLED, 60)


@pytest.mark.django_db(transaction=True)
def test_cancel_says_per_task_what_happened() -> None:
    waiting = BatchTask.submit("examples.sleep", {"seconds": 1}, run_after=timedelta(hours=1))
    other = BatchTask.submit("examples.sleep", {"seconds": 1}, run_after=timedelta(hours=1))
    run("cancel", str(other.pk))

    out = run("cancel", str(waiting.pk), str(other.pk))

    assert out.splitlines() == [
        f"Task {waiting.pk}: cancelled.",
        f"Task {other.pk}: already cancelled; nothing to cancel.",
    ]
    assert BatchTask.objects.get(pk=waiting.pk).state == TaskState.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_retry_refuses_a_task_whose_unique_key_is_taken_again() -> None:
    first = BatchTask.submit("examples.sleep", {}, unique_key="nightly", run_after=timedelta(1))
    run("cancel", str(first.pk))
    holder = BatchTask.submit("examples.sleep", {}, unique_key="nightly", run_after=timedelta(1))
    done = BatchTask.submit("examples.sleep", {}, run_after=timedelta(1))
    run("cancel", str(done.pk))

    message = refused("retry", str(first.pk))

    assert message.startswith(f"Task {first.pk} not retried: ")
    assert "another unfinished task of its type holds its unique_key" in message
    assert run("retry", str(done.pk)) == f"Task {done.pk}: will run again as attempt 2.\n"
    assert BatchTask.objects.get(pk=holder.pk).state == TaskState.NEW
    assert f"Task {holder.pk} is new; only failed or cancelled" in refused("retry", str(holder.pk))


@pytest.mark.django_db
def test_list_filters_by_state_type_and_owner_newest_first() -> None:
    alice = get_user_model().objects.create_user("alice")
    mine = [
        BatchTask.submit("examples.sleep", {}, owner=alice, run_after=timedelta(1), description=d)
        for d in ("first [b]", "second")
    ]
    BatchTask.submit("examples.progress", {}, run_after=timedelta(1))

    out = run("list", "--owner", "alice", "--type", "examples.sleep", "--state", "new")

    assert [int(row[0]) for row in table_rows(out)] == [mine[1].pk, mine[0].pk]
    assert "first [b]" in out and "alice" in out
    assert "examples.progress" not in out
    assert run("list", "--state", "running") == "No tasks match.\n"


def table_rows(out: str) -> list[list[str]]:
    """The body rows of a table ``rich`` printed without a terminal, as lists of cells."""
    rows = []
    for line in out.splitlines():
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
    return rows


# A command line (as a shell splits it) and what its one-line refusal says.
BAD_INPUT = {
    "submit examples.progres": "Unknown task type 'examples.progres'. Did you mean "
    "'examples.progress', 'examples.program' or 'examples.process_progress'? `manage.py "
    "batchtasks workers` lists the types.",
    "submit examples.progress --params '{steps: 1}'": "--params is not valid JSON: Expecting "
    "property name enclosed in double quotes at line 1 column 2.",
    "submit examples.progress --params '[1, 2]'": "--params must hold a JSON object such as",
    "submit examples.progress --params @/no/such.json": "Cannot read parameters from "
    "'/no/such.json': No such file or directory.",
    "submit examples.progress --priority 500": "priority=500 is out of range; use -100 to 100",
    "submit examples.progress --priority high": "--priority must be a whole number, not 'high'.",
    'submit reports.users_csv --params \'{"active": "yes"}\'': "Invalid parameters for "
    "task type 'reports.users_csv': active: ",
    "list --state done": "Unknown state 'done'; use one of new, queued, running, succeeded, ",
    "list --type examples.sleeep": "Did you mean 'examples.sleep', ",
    "list --owner nobody": "No user called 'nobody'.",
    "list --limit 0": "--limit must be a whole number from 1 to 10000, not '0'.",
    "show 123456789": "No task with id 123456789; `manage.py batchtasks list` shows tasks.",
    "show 12abc": "ID must be a whole number from 1 to ",
    "cancel 1 -": "ID must be a whole number from 1 to ",
    "cancel 99999999999999999999": "ID must be a whole number from 1 to ",
    "retry 123456789 987654321": "No task with id 123456789, 987654321;",
    "retry x": "ID must be a whole number from 1 to ",
    "stats --queue x": "unrecognized arguments: --queue x",
}


@pytest.mark.django_db
@pytest.mark.parametrize("line", BAD_INPUT)
def test_bad_input_is_refused_in_one_clear_line_and_writes_nothing(line: str) -> None:
    BatchTask.submit("examples.sleep", {}, run_after=timedelta(1))  # something to not change

    assert BAD_INPUT[line] in refused(*shlex.split(line))


@pytest.mark.django_db
def test_a_params_file_that_is_not_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / "params.json"
    path.write_text("steps=10")

    assert refused("submit", "examples.progress", "--params", f"@{path}") == (
        f"The file {str(path)!r} is not valid JSON: Expecting value at line 1 column 1."
    )
    path.write_text(json.dumps({"steps": 2}))
    task = BatchTask.objects.get(pk=int(run("submit", "examples.progress", "--params", f"@{path}")))
    assert task.params == {"steps": 2}


@pytest.mark.django_db
def test_a_refusal_from_the_shell_is_one_line_on_stderr_and_a_non_zero_exit() -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", "batchtasks", "submit", "examples.progres"],
        cwd=ROOT, env=command_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert done.returncode != 0
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Did you mean 'examples.progress', " in done.stderr


@pytest.mark.django_db(transaction=True)
def test_show_tells_the_keys_of_a_task() -> None:
    task = BatchTask.submit(
        "examples.sleep",
        {},
        concurrency_key="customer-42",
        rate_key="crm",
        run_after=timedelta(hours=1),
    )

    lines = run("show", str(task.pk)).splitlines()

    assert any("concurrency key" in line and "customer-42" in line for line in lines)
    assert any("rate key" in line and "crm" in line for line in lines)
