"""Executors: task types that are programs, run by real workers, speaking Sense/Net's
stdout line protocol; and what ``@batchtask`` accepts as one."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from batchtasks import BatchTask, TaskState, batchtask
from batchtasks.core.exceptions import ExecutorFailed, InvalidTaskOption
from batchtasks.core.plugin import BatchTaskPlugin, ExecutorPlugin, LocalContext
from batchtasks.core.registry import registry
from batchtasks.models import BatchTaskDefinition
from batchtasks.worker.isolation.executor import Output
from tests.test_isolation import alive, noted_pids
from tests.test_recovery import FAST
from tests.test_workers import FINAL, wait_final
from tests.workers import wait_for

EXECUTOR = ["batch.examples.program"]


@pytest.mark.worker
def test_progress_lines_are_progress_and_result_data_is_the_result(start_worker) -> None:
    start_worker("w", EXECUTOR, concurrency=1)
    task = BatchTask.submit(
        "examples.program", {"steps": 6, "delay": 0.3, "result": {"pages": 3, "ok": True}}
    )
    seen: set[tuple[str, int, str]] = set()

    def finished() -> bool:
        row = BatchTask.objects.values_list("state", "progress_percent", "progress_message")
        seen.add(row.get(pk=task.pk))
        return row.get(pk=task.pk)[0] in FINAL

    wait_for(finished, timeout=60)

    task.refresh_from_db()
    assert task.state == TaskState.SUCCEEDED, task.error
    assert task.result == {"pages": 3, "ok": True}
    midway = [(p, m) for s, p, m in seen if s == TaskState.RUNNING and 0 < p < 100]
    assert midway and all(m.startswith("step ") for _, m in midway), sorted(seen)


@pytest.mark.worker
def test_each_run_gets_its_own_working_directory_removed_afterwards(start_worker) -> None:
    start_worker("w", EXECUTOR, concurrency=1)
    first, second = wait_final(
        BatchTask.submit("examples.program", {"note": "working"}),
        BatchTask.submit("examples.program", {}),
    )

    assert (first.state, second.state) == (TaskState.SUCCEEDED, TaskState.SUCCEEDED)
    assert first.result["cwd"] != second.result["cwd"]
    assert not Path(first.result["cwd"]).exists() and not Path(second.result["cwd"]).exists()
    assert first.progress_message == "working"


@pytest.mark.worker
def test_an_error_line_and_a_nonzero_exit_fail_the_task_with_details(start_worker) -> None:
    start_worker("w", EXECUTOR, concurrency=1)
    task = BatchTask.submit(
        "examples.program",
        {
            "log": "opening the document",
            "stderr": "warning: font missing",
            "error": "the document is corrupt",
            "details": ["page 3: bad xref", "page 4: truncated"],
            "exit": 3,
        },
    )

    (task,) = wait_final(task)

    assert task.state == TaskState.FAILED
    assert task.error.type == "batchtasks.ExecutorFailed"
    assert "code 3" in task.error.message and "the document is corrupt" in task.error.message
    assert "page 3: bad xref\npage 4: truncated" in task.error.traceback
    assert "warning: font missing" in task.error.traceback
    assert "opening the document" in task.error.traceback


@pytest.mark.worker
def test_a_nonzero_exit_without_an_error_line_fails_with_the_exit_code(start_worker) -> None:
    start_worker("w", EXECUTOR, concurrency=1)
    (task,) = wait_final(BatchTask.submit("examples.program", {"exit": 7}))

    assert (task.state, task.error.type) == (TaskState.FAILED, "batchtasks.ExecutorFailed")
    assert "exited with code 7" in task.error.message


@pytest.mark.worker
def test_cancelling_an_executor_leaves_none_of_its_processes(
    start_worker, media_root: Path
) -> None:
    env = {**FAST, "BATCHTASKS_KILL_GRACE": "1"}
    start_worker("w", EXECUTOR, concurrency=1, env=env)
    task = BatchTask.submit("examples.program", {"spawn": True, "silent": 300})
    (grandchild,) = wait_for(lambda: noted_pids(media_root, task), timeout=30)
    assert alive(grandchild)

    assert task.cancel()
    (task,) = wait_final(task, timeout=30)

    assert task.state == TaskState.CANCELLED
    wait_for(lambda: not alive(grandchild), timeout=5)


def gone(pid: int) -> bool:
    """No such process, not even a zombie waiting for its parent to collect it."""
    return not psutil.pid_exists(pid)


def zombie_children(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children() if c.status() == psutil.STATUS_ZOMBIE]


@pytest.mark.worker
def test_daemons_an_executor_started_end_with_its_run(start_worker, media_root: Path) -> None:
    start_worker("w", EXECUTOR, concurrency=1)
    # One daemon outlives the program, one exits while the program still runs.
    task = BatchTask.submit("examples.program", {"escape": [300, 0.1], "silent": 1})

    (task,) = wait_final(task)

    assert task.state == TaskState.SUCCEEDED, task.error
    daemons = noted_pids(media_root, task)
    assert len(daemons) == 2
    wait_for(lambda: all(gone(pid) for pid in daemons), timeout=5)
    assert zombie_children(task.worker_pid) == []


@pytest.mark.worker
def test_a_daemon_of_a_cancelled_executor_ends_with_it(start_worker, media_root: Path) -> None:
    start_worker("w", EXECUTOR, concurrency=1, env={**FAST, "BATCHTASKS_KILL_GRACE": "1"})
    task = BatchTask.submit("examples.program", {"escape": [300], "silent": 300})
    (daemon,) = wait_for(lambda: noted_pids(media_root, task), timeout=30)
    assert alive(daemon)

    assert task.cancel()
    (task,) = wait_final(task, timeout=30)

    assert task.state == TaskState.CANCELLED
    wait_for(lambda: gone(daemon), timeout=5)
    assert zombie_children(task.worker_pid) == []


@pytest.mark.worker
def test_a_daemon_of_an_executor_past_its_hard_time_limit_ends_with_it(
    start_worker, media_root: Path
) -> None:
    """Celery's hard time limit SIGTERMs the pool process, not a stop request: the
    processes that left the program's group go down with it too."""
    BatchTaskDefinition.objects.filter(name="examples.program").update(timeout=2)
    start_worker("w", EXECUTOR, concurrency=1)
    task = BatchTask.submit("examples.program", {"escape": [300], "silent": 300})
    (daemon,) = wait_for(lambda: noted_pids(media_root, task), timeout=30)

    (task,) = wait_final(task, timeout=60)

    assert (task.state, task.error_type) == (
        TaskState.FAILED,
        "billiard.exceptions.TimeLimitExceeded",
    )
    wait_for(lambda: gone(daemon), timeout=5)


def argv_of_every_process() -> list[str]:
    texts = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            texts.append(path.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return texts


@pytest.mark.worker
@pytest.mark.parametrize(
    ("type_name", "params", "program"),
    [
        ("examples.program", {"silent": 30, "password": ""}, "executors/demo.py"),
        # Declared parameters: the secret rides in a field the type has.
        (
            "examples.process_progress",
            {"steps": 1, "silent_after": 30, "message": ""},
            # Its child is a fork of the template, with the template's argv.
            "isolation.template",
        ),
    ],
    ids=["executor", "process"],
)
def test_parameters_never_appear_in_any_process_arguments(
    start_worker, type_name: str, params: dict[str, Any], program: str
) -> None:
    # Short graces: the run is cancelled at the end and the worker then stops at once.
    env = {"BATCHTASKS_CANCEL_GRACE": "1", "BATCHTASKS_KILL_GRACE": "1"}
    start_worker("w", [*EXECUTOR, "batch.examples.process_progress"], concurrency=1, env=env)
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    field = "password" if "password" in params else "message"
    task = BatchTask.submit(type_name, {**params, field: secret})
    # (A template and its waiting child are up before any attempt: wait for the run too.)
    wait_for(
        lambda: (
            BatchTask.objects.get(pk=task.pk).state == TaskState.RUNNING
            and any(program in argv for argv in argv_of_every_process())
        )
    )

    # Look a few times while it runs: the program or child is up by then.
    for _ in range(20):
        leaks = [argv for argv in argv_of_every_process() if secret in argv]
        assert leaks == []
    assert BatchTask.objects.get(pk=task.pk).state == TaskState.RUNNING
    assert task.cancel()
    wait_final(task, timeout=30)


@pytest.mark.worker
def test_an_executor_silent_past_its_inactivity_timeout_is_killed_and_fails(
    start_worker, media_root: Path
) -> None:
    BatchTaskDefinition.objects.filter(name="examples.program").update(inactivity_timeout=2)
    start_worker("w", EXECUTOR, concurrency=1, env={"BATCHTASKS_KILL_GRACE": "1"})
    task = BatchTask.submit("examples.program", {"steps": 2, "spawn": True, "silent": 300})

    (task,) = wait_final(task, timeout=30)

    assert task.state == TaskState.FAILED
    assert task.error.type == "batchtasks.InactivityTimeout"
    assert "inactivity_timeout" in task.error.message
    wait_for(lambda: not any(alive(pid) for pid in noted_pids(media_root, task)), timeout=5)


class _Program(ExecutorPlugin):
    command = ["true"]


def test_an_executor_type_must_be_an_executor_plugin_with_a_command() -> None:
    with pytest.raises(InvalidTaskOption, match="needs a subclass"):

        @batchtask("tests.not_a_program", isolation="executor")
        class NotAProgram(BatchTaskPlugin):
            def run(self, params: Any) -> None:
                return None

    with pytest.raises(InvalidTaskOption, match="needs isolation='executor'"):
        batchtask("tests.program_inline")(_Program)

    class NoCommand(ExecutorPlugin):
        command: list[str] = []

    with pytest.raises(InvalidTaskOption, match="non-empty list of strings"):
        batchtask("tests.no_command", isolation="executor")(NoCommand)

    class ShellLine(ExecutorPlugin):
        command = "convert in.pdf out.png"  # type: ignore[assignment]

    with pytest.raises(InvalidTaskOption, match="non-empty list of strings"):
        batchtask("tests.shell_line", isolation="executor")(ShellLine)
    assert not {"tests.not_a_program", "tests.program_inline", "tests.no_command"} & {
        spec.name for spec in registry
    }


def read(*lines: str) -> tuple[Output, LocalContext]:
    context = LocalContext()
    output = Output(context, on_activity=lambda: None)
    for line in lines:
        output.stdout_line(line)
    return output, context


def test_progress_lines_with_and_without_a_percent_are_read() -> None:
    output, context = read(
        "Progress: 10",
        "Progress: 65% converting page 3",
        "Progress: The document was downloaded.",
        "Progress: 250 too much",
    )

    assert context.progress == [
        (10, ""),
        (65, "converting page 3"),
        (65, "The document was downloaded."),
        (100, "too much"),
    ]
    assert output.outcome("demo", 0) is None


def test_result_data_is_json_or_else_the_text() -> None:
    assert read('ResultData: {"pages": [1, 2]}')[0].outcome("demo", 0) == {"pages": [1, 2]}
    assert read("ResultData: done, 3 pages")[0].outcome("demo", 0) == "done, 3 pages"


def test_an_error_line_fails_even_with_exit_code_zero_and_keeps_the_lines_after_it() -> None:
    output, _ = read("starting", "ERROR: cannot open input", "  at Main()", "  at Run()")

    with pytest.raises(ExecutorFailed) as failed:
        output.outcome("demo", 0)

    assert str(failed.value) == "Executor 'demo' exited with code 0: cannot open input"
    assert "  at Main()\n  at Run()" in failed.value.details
    assert "starting" in failed.value.details
