"""Process isolation with real workers: a child per attempt forked from the pool process's
template, its progress and result, its memory limit, cancels and time limits that take its
grandchildren too, and the template's own life (replaced when it dies or is worn)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import psutil
import pytest

from batchtasks import BatchTask, TaskState
from batchtasks.core.conf import BatchTasksSettings
from batchtasks.core.exceptions import ConfigurationError
from batchtasks.models import BatchTaskDefinition
from batchtasks.worker.isolation import forkserver, reaper
from batchtasks.worker.isolation.forkserver import TEMPLATE_MODULE
from plugins.executors.demo import escape
from tests.test_recovery import FAST
from tests.test_workers import FINAL, wait_final
from tests.workers import Worker, wait_for

pytestmark = pytest.mark.worker

ISOLATED = [
    "batch.examples.process_progress",
    "batch.examples.process_memory_hog",
    "batch.examples.process_spawner",
]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def noted_pids(media_root: Path, task: BatchTask) -> list[int]:
    """Pids the task's plugin (or program) noted for the processes it started."""
    path = media_root / "batchtasks" / "pids" / str(task.pk)
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_an_isolated_task_shows_progress_while_running_and_saves_its_result(
    start_worker,
) -> None:
    start_worker("w", ISOLATED, concurrency=1)
    task = BatchTask.submit("examples.process_progress", {"steps": 8, "delay": 0.3})
    seen: set[tuple[str, int, str]] = set()

    def finished() -> bool:
        row = BatchTask.objects.values_list("state", "progress_percent", "progress_message")
        seen.add(row.get(pk=task.pk))
        return row.get(pk=task.pk)[0] in FINAL

    wait_for(finished, timeout=60, interval=0.05)

    task.refresh_from_db()
    assert task.state == TaskState.SUCCEEDED, task.error
    assert [p for s, p, _ in seen if s == TaskState.RUNNING and 0 < p < 100], sorted(seen)
    assert task.result["steps"] == 8
    assert task.result["pid"] != task.worker_pid, "it ran in the pool process itself"
    assert (task.progress_percent, task.progress_message) == (100, "step 8 of 8")


def test_an_isolated_plugin_error_is_the_attempts_error(start_worker) -> None:
    start_worker("w", ISOLATED, concurrency=1)
    (task,) = wait_final(BatchTask.submit("examples.process_progress", {"fail": "bad input"}))

    assert task.state == TaskState.FAILED
    assert (task.error.type, task.error.message) == ("ValueError", "bad input")
    assert "plugins/examples.py" in task.error.traceback


def test_going_past_the_memory_limit_fails_the_task_and_the_worker_runs_the_next(
    start_worker,
) -> None:
    start_worker("w", ISOLATED, concurrency=1)
    (hog,) = wait_final(BatchTask.submit("examples.process_memory_hog", {"mb": 2048}))
    (fine,) = wait_final(BatchTask.submit("examples.process_progress", {"steps": 1}))
    (small,) = wait_final(BatchTask.submit("examples.process_memory_hog", {"mb": 16}))

    assert hog.state == TaskState.FAILED
    assert hog.error.type == "MemoryError", hog.error
    assert fine.state == TaskState.SUCCEEDED
    assert fine.worker_pid == hog.worker_pid, "the pool process was replaced"
    assert (small.state, small.result["allocated_mb"]) == (TaskState.SUCCEEDED, 16)


def test_a_plugin_cannot_lift_its_memory_limit(start_worker) -> None:
    limit = BatchTaskDefinition.objects.get(name="examples.process_memory_hog").memory_limit
    start_worker("w", ISOLATED, concurrency=1)
    small, big = wait_final(
        BatchTask.submit("examples.process_memory_hog", {"mb": 16, "lift_limit": True}),
        BatchTask.submit("examples.process_memory_hog", {"mb": 2048, "lift_limit": True}),
    )

    assert small.state == TaskState.SUCCEEDED, small.error
    assert small.result["limits"] == [limit, limit]
    assert small.result["lifted"] is False, small.result
    assert (big.state, big.error.type) == (TaskState.FAILED, "MemoryError"), big.result


@pytest.mark.parametrize("cooperate", [True, False], ids=["checks-cancel", "never-checks"])
def test_cancelling_an_isolated_task_leaves_none_of_its_processes(
    start_worker, media_root: Path, cooperate: bool
) -> None:
    env = {**FAST, "BATCHTASKS_CANCEL_GRACE": "1", "BATCHTASKS_KILL_GRACE": "1"}
    start_worker("w", ISOLATED, concurrency=1, env=env)
    task = BatchTask.submit("examples.process_spawner", {"cooperate": cooperate})
    (grandchild,) = wait_for(lambda: noted_pids(media_root, task), timeout=30)
    assert alive(grandchild)

    assert task.cancel()
    (task,) = wait_final(task, timeout=30)

    assert task.state == TaskState.CANCELLED
    wait_for(lambda: not alive(grandchild), timeout=5)


def test_a_daemon_an_isolated_plugin_started_ends_with_its_run(
    start_worker, media_root: Path
) -> None:
    start_worker("w", ISOLATED, concurrency=1)
    task = BatchTask.submit("examples.process_spawner", {"escape": True})

    (task,) = wait_final(task)

    assert task.state == TaskState.SUCCEEDED, task.error
    (daemon,) = noted_pids(media_root, task)
    wait_for(lambda: not psutil.pid_exists(daemon), timeout=5)
    # The pool process (a subreaper while the run lasted) collected it and goes on.
    (nxt,) = wait_final(BatchTask.submit("examples.process_progress", {"steps": 1}))
    assert (nxt.state, nxt.worker_pid) == (TaskState.SUCCEEDED, task.worker_pid)
    pool = psutil.Process(task.worker_pid)
    assert [c.pid for c in pool.children() if c.status() == psutil.STATUS_ZOMBIE] == []


@pytest.mark.skipif(not reaper.SUPPORTED, reason="no child subreapers here (Linux only)")
def test_the_end_of_an_attempt_kills_its_orphans_and_spares_older_children() -> None:
    older = subprocess.Popen(["sleep", "300"])
    try:
        with reaper.adopting() as orphans:
            daemon, brief = escape(300), escape(0)
            wait_for(lambda: psutil.Process(brief).status() == psutil.STATUS_ZOMBIE)
            orphans.reap_exited(attempt_pid=older.pid)
            assert not psutil.pid_exists(brief), "an orphan that exited stays a zombie"
            assert psutil.Process(daemon).ppid() == os.getpid()

        assert not psutil.pid_exists(daemon)
        assert older.poll() is None, "a child from before the attempt was killed"
        assert not reaper.is_subreaper()
    finally:
        older.kill()
        older.wait()


def test_a_hard_time_limit_kills_the_isolated_process_group(start_worker, media_root: Path) -> None:
    BatchTaskDefinition.objects.filter(name="examples.process_spawner").update(timeout=3)
    start_worker("w", ISOLATED, concurrency=1, env=FAST)
    # The limit is the plugin's time: the template sets up (seconds on a busy machine) first.
    wait_final(BatchTask.submit("examples.process_progress", {"steps": 1, "delay": 0}))
    task = BatchTask.submit("examples.process_spawner", {"cooperate": False})
    (grandchild,) = wait_for(lambda: noted_pids(media_root, task), timeout=30)

    (task,) = wait_final(task, timeout=30)

    assert task.state == TaskState.FAILED
    assert task.error.type == "billiard.exceptions.TimeLimitExceeded"
    wait_for(lambda: not alive(grandchild), timeout=5)


def test_an_isolated_task_silent_past_its_inactivity_timeout_fails(start_worker) -> None:
    BatchTaskDefinition.objects.filter(name="examples.process_progress").update(
        inactivity_timeout=2
    )
    start_worker("w", ISOLATED, concurrency=1)
    task = BatchTask.submit(
        "examples.process_progress", {"steps": 2, "delay": 0.1, "silent_after": 60}
    )

    (task,) = wait_final(task, timeout=30)

    assert task.state == TaskState.FAILED
    assert task.error.type == "batchtasks.InactivityTimeout"
    assert "inactivity_timeout" in task.error.message


def test_a_soft_time_limit_reaches_the_plugin_in_its_child(start_worker) -> None:
    BatchTaskDefinition.objects.filter(name="examples.process_progress").update(
        soft_timeout=2, timeout=20
    )
    start_worker("w", ISOLATED, concurrency=1)
    # The limit is the plugin's time: the template sets up (seconds on a busy machine) first.
    wait_final(BatchTask.submit("examples.process_memory_hog", {"mb": 16}))
    task = BatchTask.submit("examples.process_progress", {"steps": 100, "delay": 0.1})

    (task,) = wait_final(task, timeout=30)

    assert task.state == TaskState.FAILED
    assert task.error.type.endswith("SoftTimeLimitExceeded"), task.error
    assert "plugins/examples.py" in task.error.traceback, "not raised inside the plugin"
    assert (task.finished_at - task.started_at).total_seconds() < 10


def templates(worker: Worker) -> list[psutil.Process]:
    """The template processes of a worker's pool processes (not the children they forked,
    which have the same command line)."""
    found = []
    for process in psutil.Process(worker.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a zombie, or gone
            if TEMPLATE_MODULE in " ".join(process.cmdline()):
                found.append(process)
    pids = {process.pid for process in found}
    return [process for process in found if process.ppid() not in pids]


def spares(template: psutil.Process) -> list[int]:
    """The children a template forked that wait for their attempt (or run it)."""
    return [child.pid for child in template.children() if alive(child.pid)]


def run_quick(**params: object) -> BatchTask:
    (task,) = wait_final(
        BatchTask.submit("examples.process_progress", {"steps": 1, "delay": 0, **params})
    )
    assert task.state == TaskState.SUCCEEDED, task.error
    return task


def test_attempts_are_forks_of_one_template_with_their_own_database_connections(
    start_worker,
) -> None:
    worker = start_worker("w", ISOLATED, concurrency=1)
    first, second = run_quick(database=True), run_quick(database=True)

    (template,) = templates(worker)
    assert first.result["parent"] == second.result["parent"] == template.pid
    assert first.result["pid"] != second.result["pid"]
    # Each child opened its own connection after its fork; the template holds none.
    assert first.result["backend"] != second.result["backend"]
    assert [c for c in template.net_connections() if c.raddr] == []


def test_a_forked_child_has_the_attempts_environment_and_nothing_of_the_template(
    start_worker,
) -> None:
    worker = start_worker("w", ISOLATED, concurrency=1)
    task = run_quick()

    (template,) = templates(worker)
    pool = template.parent()
    assert pool.ppid() == worker.pid
    assert task.result["cwd"] == pool.cwd()
    assert task.result["sockets"] == 0, "it holds the template's socket or a connection"
    # Its process group (it and all it started) ended with it: the template is left, with
    # the next attempt's child, a fresh fork.
    wait_for(lambda: not alive(task.result["pid"]), timeout=5)
    wait_for(lambda: len(spares(template)) == 1 and pool.children() == [template], timeout=5)
    assert spares(template) != [task.result["pid"]]


def test_a_dead_template_is_replaced_and_the_next_attempt_runs(start_worker) -> None:
    worker = start_worker("w", ISOLATED, concurrency=1)
    run_quick()
    (template,) = templates(worker)
    pool = template.parent()

    template.kill()
    wait_for(lambda: not alive(template.pid), timeout=5)
    task = run_quick()

    (new,) = templates(worker)
    assert task.result["parent"] == new.pid != template.pid
    assert new.parent() == pool


def test_a_template_killed_while_its_child_runs_loses_no_attempt(start_worker) -> None:
    worker = start_worker("w", ISOLATED, concurrency=1)
    run_quick()
    (template,) = templates(worker)
    task = BatchTask.submit("examples.process_progress", {"steps": 6, "delay": 0.3})
    wait_for(lambda: BatchTask.objects.get(pk=task.pk).progress_percent > 0, timeout=30)

    template.kill()
    (task,) = wait_final(task)

    assert task.state == TaskState.SUCCEEDED, task.error
    assert task.result["steps"] == 6
    assert run_quick().result["parent"] != template.pid


def test_a_template_is_replaced_after_its_forks(start_worker) -> None:
    start_worker("w", ISOLATED, concurrency=1, env={"BATCHTASKS_ISOLATION_TEMPLATE_FORKS": "2"})
    parents = [run_quick().result["parent"] for _ in range(3)]

    assert parents[0] == parents[1] != parents[2]
    wait_for(lambda: not alive(parents[0]), timeout=5)


def test_a_pool_process_sets_its_template_up_and_forks_a_child_before_any_attempt(
    start_worker,
) -> None:
    worker = start_worker("w", ISOLATED, concurrency=2)

    def waiting() -> set[int]:
        return {pid for template in templates(worker) for pid in spares(template)}

    # Each template forks the first attempt's child ahead of it.
    wait_for(lambda: len(templates(worker)) == 2 and len(waiting()) == 2, timeout=30)
    before = waiting()

    task = run_quick()

    # The first attempt ran in a child that was there before it was submitted: it paid
    # neither the template's setup nor the fork.
    assert task.result["pid"] in before
    assert task.result["parent"] in {template.pid for template in templates(worker)}


def test_a_worker_without_process_queues_starts_no_template(start_worker) -> None:
    worker = start_worker("w", ["batch.examples.noop"], concurrency=1)
    (task,) = wait_final(BatchTask.submit("examples.noop", {}))

    assert task.state == TaskState.SUCCEEDED
    assert templates(worker) == []


def test_a_spare_child_of_another_environment_is_replaced(
    transactional_db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = forkserver.Template()
    try:
        template.request()
        assert template.ready(60)
        assert template.spare is not None
        first = template.spare.pid
        assert first is not None and alive(first)

        monkeypatch.chdir(tmp_path)  # the attempt's working directory differs from the spare's
        child, events = template.take()

        assert child.pid != first
        wait_for(lambda: not alive(first), timeout=5)
        # It takes the attempt's working directory just after its fork.
        wait_for(lambda: psutil.Process(child.pid).cwd() == str(tmp_path), timeout=5)
        assert template.forks == 2
        child.stdin.close()  # it ends without an attempt
        assert child.wait() == 0
        child.release()
        os.close(events)
    finally:
        template.close()


@pytest.mark.parametrize("value", [-1, 1.5, True, "10"])
def test_isolation_template_forks_must_be_a_count(value: object) -> None:
    with pytest.raises(ConfigurationError, match="ISOLATION_TEMPLATE_FORKS"):
        BatchTasksSettings.from_dict({"ISOLATION_TEMPLATE_FORKS": value})
