"""Many small tasks per message, and their finishes written in batches: real workers on
the real broker. Batching is switched on for a type by giving it a measured run time."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
from django.contrib.auth import get_user_model
from django.db import transaction

from batchtasks import BatchTask, TaskState
from batchtasks.models import BatchTaskAttempt
from batchtasks.transport.depth import queue_depth
from batchtasks.worker.batches import CANCELLED_WAITING
from tests.conftest import runs_of, set_limit
from tests.test_recovery import FAST, define
from tests.test_workers import max_overlap, wait_final
from tests.workers import wait_for

pytestmark = pytest.mark.worker

SLEEP = ["batch.examples.sleep"]
QUICK = {"seconds": 0, "record": True}


def batched(per_message: int | None = None, run_seconds: float = 0.001) -> None:
    """Make examples.sleep look short (a measured run time) so its backlog shares messages."""
    define("examples.sleep", run_seconds=run_seconds, tasks_per_message=per_message)


def succeeded(ids: list[int]) -> int:
    return BatchTask.objects.filter(pk__in=ids, state=TaskState.SUCCEEDED).count()


def test_a_backlog_of_short_tasks_shares_messages_and_each_task_keeps_its_record(
    start_worker, record_dir: Path
) -> None:
    batched(per_message=5)
    tasks = BatchTask.submit_many("examples.sleep", [QUICK] * 20)
    assert queue_depth(SLEEP[0]) == 4  # 20 tasks, 5 a message

    start_worker("w", SLEEP, concurrency=2)
    done = wait_final(*tasks)

    assert {t.state for t in done} == {TaskState.SUCCEEDED}
    attempts = BatchTaskAttempt.objects.filter(task__in=tasks)
    assert sorted(attempts.values_list("task_id", "outcome")) == [
        (t.pk, TaskState.SUCCEEDED) for t in tasks
    ]
    for task in done:
        assert task.started_at <= task.finished_at and task.progress_percent == 100
        assert len(runs_of(record_dir, task.pk)) == 1
    # A message's tasks ran one after another in one pool process, in the order sent.
    for first in range(0, 20, 5):
        runs = [runs_of(record_dir, t.pk)[0] for t in tasks[first : first + 5]]
        assert len({pid for pid, _, _ in runs}) == 1
        assert [start for _, start, _ in runs] == sorted(start for _, start, _ in runs)


def test_a_cancelled_id_in_a_message_is_skipped(start_worker, record_dir: Path) -> None:
    batched(per_message=5)
    tasks = BatchTask.submit_many("examples.sleep", [QUICK] * 5)
    assert queue_depth(SLEEP[0]) == 1
    tasks[2].cancel()

    start_worker("w", SLEEP, concurrency=1)
    done = wait_final(*tasks)

    assert [t.state for t in done] == [TaskState.SUCCEEDED] * 2 + [TaskState.CANCELLED] + [
        TaskState.SUCCEEDED
    ] * 2
    assert runs_of(record_dir, tasks[2].pk) == []
    assert all(len(runs_of(record_dir, t.pk)) == 1 for t in tasks if t != tasks[2])


def test_a_task_cancelled_while_it_waits_in_its_message_never_starts(
    start_worker, record_dir: Path
) -> None:
    batched(per_message=3)
    first, second, third = BatchTask.submit_many(
        "examples.sleep", [{"seconds": 1.5, "record": True}, QUICK, QUICK]
    )
    start_worker("w", SLEEP, concurrency=1, env=FAST)
    wait_for(lambda: runs_of(record_dir, first.pk), timeout=30)
    assert BatchTask.objects.get(pk=third.pk).state == TaskState.RUNNING  # claimed, waiting
    third.cancel()

    done = wait_final(first, second, third)

    assert [t.state for t in done] == [TaskState.SUCCEEDED, TaskState.SUCCEEDED, "cancelled"]
    assert done[2].error_message == CANCELLED_WAITING
    assert runs_of(record_dir, third.pk) == []


def test_a_task_cancelled_in_its_message_never_starts_though_the_flags_were_just_read(
    start_worker, record_dir: Path
) -> None:
    """The cancel comes long before the flags would be read again by time (an interval of
    a minute): the worker learns of it and reads them before the next start."""
    batched(per_message=3)
    first, second, third = BatchTask.submit_many(
        "examples.sleep", [{"seconds": 3, "record": True}, QUICK, QUICK]
    )
    start_worker("w", SLEEP, concurrency=1, env={**FAST, "BATCHTASKS_PROGRESS_INTERVAL": "60"})
    wait_for(lambda: runs_of(record_dir, first.pk), timeout=30)
    second.cancel()

    done = wait_final(first, second, third)

    assert [t.state for t in done] == [TaskState.SUCCEEDED, "cancelled", TaskState.SUCCEEDED]
    assert runs_of(record_dir, second.pk) == []
    assert done[1].error_message == CANCELLED_WAITING


def test_a_cancel_of_a_task_waiting_in_a_message_never_touches_the_one_running_ahead(
    start_worker, record_dir: Path
) -> None:
    """Messages mix owners: one user's cancel of a task that waits behind another user's
    running task must not signal, kill or repeat that task."""
    batched(per_message=10)
    tasks = BatchTask.submit_many("examples.sleep", [{"seconds": 6, "record": True}] + [QUICK] * 9)
    assert queue_depth(SLEEP[0]) == 1
    start_worker("w", SLEEP, concurrency=1, env={**FAST, "BATCHTASKS_KILL_GRACE": "1"})
    first, fifth = tasks[0], tasks[4]
    wait_for(lambda: runs_of(record_dir, first.pk), timeout=30)
    fifth.cancel()

    done = wait_final(*tasks)

    assert [t.state for t in done] == [TaskState.SUCCEEDED] * 4 + ["cancelled"] + [
        TaskState.SUCCEEDED
    ] * 5
    assert [end is not None for _, _, end in runs_of(record_dir, first.pk)] == [True]
    assert outcomes(first) == [TaskState.SUCCEEDED] and done[0].lost_runs == 0
    assert runs_of(record_dir, fifth.pk) == []
    assert done[4].error_message == CANCELLED_WAITING


def test_a_cancelled_task_that_ignores_sigterm_is_killed_alone_and_its_neighbours_run_once(
    start_worker, record_dir: Path
) -> None:
    """Only the stubborn task's process is killed; the task that finished before it keeps
    its success, and the tasks behind it run afterwards in a fresh process, none counted
    as a lost run."""
    batched(per_message=5)
    stubborn = {"seconds": 60, "record": True, "ignore_sigterm": True, "cooperate": False}
    tasks = BatchTask.submit_many("examples.sleep", [QUICK, stubborn, QUICK, QUICK, QUICK])
    assert queue_depth(SLEEP[0]) == 1
    start_worker("w", SLEEP, concurrency=1, env={**FAST, "BATCHTASKS_KILL_GRACE": "1"})
    wait_for(lambda: runs_of(record_dir, tasks[1].pk), timeout=30)
    tasks[1].cancel()

    done = wait_final(*tasks)

    assert [t.state for t in done] == [TaskState.SUCCEEDED, "cancelled"] + [TaskState.SUCCEEDED] * 3
    [(killed, _, end)] = runs_of(record_dir, tasks[1].pk)
    assert end is None  # it never finished: killed
    for task in [done[0], *done[2:]]:
        assert outcomes(task) == [TaskState.SUCCEEDED]
        assert (task.attempt, task.lost_runs) == (1, 0)
        assert len(runs_of(record_dir, task.pk)) == 1
    assert all(runs_of(record_dir, t.pk)[0][0] != killed for t in tasks[2:])


def outcomes(task: BatchTask) -> list[str]:
    """The outcomes of the task's attempts, in order."""
    rows = BatchTaskAttempt.objects.filter(task=task).order_by("number")
    return list(rows.values_list("outcome", flat=True))


def test_priority_and_fair_turns_hold_with_batching(start_worker, record_dir: Path) -> None:
    users = get_user_model().objects
    alice, bob, carol = (users.create_user(n) for n in ("alice", "bob", "carol"))
    batched(per_message=4)
    set_limit("examples.sleep", 4)
    with transaction.atomic():  # one dispatch pass sees all of them
        BatchTask.submit_many("examples.sleep", [QUICK] * 6, owner=alice)
        BatchTask.submit_many("examples.sleep", [QUICK] * 3, owner=bob)
        BatchTask.submit_many("examples.sleep", [QUICK] * 2, owner=carol, priority=50)
    assert queue_depth(SLEEP[0]) == 1  # the best 4 of 11, in one message

    start_worker("w", SLEEP, concurrency=1)
    tasks = list(BatchTask.objects.all())
    wait_final(*tasks)

    started = sorted(tasks, key=lambda t: runs_of(record_dir, t.pk)[0][1])
    names = {alice.pk: "a", bob.pk: "b", carol.pk: "c"}
    assert "".join(names[t.owner_id] for t in started) == "ccabababaaa"


def test_a_batched_type_never_runs_more_at_once_than_its_limit(
    start_worker, record_dir: Path
) -> None:
    batched(per_message=10, run_seconds=0.01)
    set_limit("examples.sleep", 3)
    tasks = BatchTask.submit_many("examples.sleep", [{"seconds": 0.05, "record": True}] * 40)
    assert queue_depth(SLEEP[0]) == 1  # nobody consumes yet: the 3 admitted share one

    start_worker("a", SLEEP, concurrency=3)
    start_worker("b", SLEEP, concurrency=3)
    done = wait_final(*tasks, timeout=120)

    assert {t.state for t in done} == {TaskState.SUCCEEDED}
    runs = [run for t in tasks for run in runs_of(record_dir, t.pk)]
    assert len(runs) == 40
    assert max_overlap([(start, end) for _, start, end in runs if end is not None]) <= 3


def test_a_sigkill_loses_no_batched_finish_and_repeats_at_most_what_was_in_hand(
    start_worker, record_dir: Path
) -> None:
    """Tiny tasks, many a message, finishes held for a window: SIGKILL the worker while
    it runs them. Every task ends succeeded once; a task runs again only if it was in
    hand (claimed, running or held) at the kill, so repeats <= COMPLETION_BATCH a process."""
    batched()
    env = {**FAST, "BATCHTASKS_COMPLETION_WINDOW": "0.05"}
    a = start_worker("a", SLEEP, concurrency=2, env=env)
    tasks = BatchTask.submit_many("examples.sleep", [{"seconds": 0.002, "record": True}] * 3000)
    ids = [t.pk for t in tasks]
    running = BatchTask.objects.filter(state=TaskState.RUNNING, worker=a.hostname)
    # Between two windows (the first drained, the next not admitted yet) it holds none.
    wait_for(lambda: succeeded(ids) >= 600 and running.count() >= 10, timeout=120, interval=0.01)
    a.kill()
    in_hand = running.count()
    assert in_hand > 0
    start_worker("b", SLEEP, concurrency=2, env=env)

    wait_for(lambda: succeeded(ids) == len(ids), timeout=300, interval=0.5)

    wins = BatchTaskAttempt.objects.filter(task_id__in=ids, outcome=TaskState.SUCCEEDED)
    assert wins.count() == len(ids) == wins.values("task_id").distinct().count()
    runs = {pk: len([r for r in runs_of(record_dir, pk) if r[2] is not None]) for pk in ids}
    assert min(runs.values()) >= 1, "every task ran to its end"
    repeated = sum(n - 1 for n in runs.values())
    assert repeated <= in_hand, f"{repeated} repeated runs, {in_hand} in hand at the kill"
    assert repeated <= 2 * 50, "at most one window of finishes a pool process"
    print(f"batched sigkill: in hand={in_hand} repeated={repeated}")


@pytest.mark.parametrize("per_message", [5, 1])
def test_a_backlog_drains_window_after_window_without_waiting_for_the_timer(
    start_worker, settings, per_message: int
) -> None:
    """Tiny tasks empty a small window within the interval between two refills of a pool
    process: the refill it skips is made up soon after, so the backlog never waits for
    the periodic pass (an hour here)."""
    settings.BATCHTASKS = {**settings.BATCHTASKS, "DISPATCH_WINDOW": 10}
    batched(per_message=per_message)
    tasks = BatchTask.submit_many("examples.sleep", [{"seconds": 0}] * 200)
    assert BatchTask.objects.filter(state=TaskState.QUEUED).count() == 10

    env = {"BATCHTASKS_DISPATCH_WINDOW": "10", "BATCHTASKS_DISPATCH_INTERVAL": "3600"}
    start_worker("w", SLEEP, concurrency=2, env=env)
    done = wait_final(*tasks, timeout=60)

    assert {t.state for t in done} == {TaskState.SUCCEEDED}


# --- finishes held across messages of one task each ----------------------------------------
#: A window just under a beat: a held finish is written before a second beat can miss it.
HELD_ACROSS = {
    "BATCHTASKS_HEARTBEAT_SECONDS": "0.5",
    "BATCHTASKS_COMPLETION_WINDOW": "0.45",
    "BATCHTASKS_MESSAGE_BATCH_SECONDS": "0",
}


def test_a_held_single_finish_is_not_ended_as_vanished_by_a_beat(
    start_worker, record_dir: Path
) -> None:
    """Each message carries one task; its success waits up to the window to be written,
    while the beats (more often than usual here) see no pool process holding it."""
    start_worker("w", SLEEP, concurrency=1, env=HELD_ACROSS)
    for _ in range(8):  # one at a time: each finish is held alone, for the whole window
        (task,) = wait_final(BatchTask.submit("examples.sleep", QUICK))

        assert (task.state, task.attempt, task.lost_runs) == (TaskState.SUCCEEDED, 1, 0)
        assert len(runs_of(record_dir, task.pk)) == 1
        attempts = BatchTaskAttempt.objects.filter(task=task)
        assert list(attempts.values_list("outcome", flat=True)) == [TaskState.SUCCEEDED]


def test_a_killed_pool_process_loses_no_held_single_finish(start_worker, record_dir: Path):
    """SIGKILL a pool process holding the successes of messages of one task each: those
    tasks stay running under their lease, end as lost runs and run again; none is lost."""
    env = {
        **HELD_ACROSS,
        "BATCHTASKS_HEARTBEAT_SECONDS": "2",
        "BATCHTASKS_COMPLETION_WINDOW": "1.9",
    }
    w = start_worker("w", SLEEP, concurrency=1, env=env)
    tasks = [BatchTask.submit("examples.sleep", QUICK) for _ in range(3)]
    ids = [t.pk for t in tasks]

    def all_ran() -> bool:  # to their end: held, written or not
        return all(any(end for _, _, end in runs_of(record_dir, pk)) for pk in ids)

    wait_for(all_ran, interval=0.01)
    running = BatchTask.objects.filter(pk__in=ids, state=TaskState.RUNNING)
    os.kill(psutil.Process(w.process.pid).children()[0].pid, signal.SIGKILL)
    held = set(running.values_list("pk", flat=True))
    assert held, "the kill came after the window: nothing held to lose"

    done = wait_final(*tasks, timeout=60)

    assert {t.state for t in done} == {TaskState.SUCCEEDED}
    for task in done:
        runs = runs_of(record_dir, task.pk)
        outcomes = list(
            BatchTaskAttempt.objects.filter(task=task).order_by("number").values_list("outcome")
        )
        if task.pk in held:  # ran to its end, its finish lost with the process: again
            assert (task.attempt, task.lost_runs, len(runs)) == (2, 1, 2)
            assert outcomes == [("lost",), ("succeeded",)]
        else:
            assert (task.attempt, task.lost_runs, len(runs)) == (1, 0, 1)
            assert outcomes == [("succeeded",)]


def test_the_finalizers_of_batched_finishes_run_holding_the_state_lock(
    start_worker, settings, media_root: Path
) -> None:
    """The timer thread writes held finishes on the state connection it shares with the
    pool process's main thread; the finalizers that follow them (their claims and records
    on that connection) must hold the lock too, or the two threads' statements meet in
    one transaction (the soak saw "can't change 'autocommit' now: connection in
    transaction status INTRANS", and finalizers run twice for one outcome)."""
    from tests.held_finalizers import TYPE, noted_folder

    settings.MEDIA_ROOT = media_root  # the workers'
    define(TYPE, run_seconds=0.001, tasks_per_message=5)
    # Successes are held and written together; failures (every third) at once.
    tasks = BatchTask.submit_many(TYPE, [{"fail": n % 3 == 0} for n in range(21)])
    start_worker(
        "w", [f"batch.{TYPE}"], concurrency=1, env={"BATCHTASKS_COMPLETION_WINDOW": "0.05"}
    )
    done = wait_final(*tasks)
    assert {t.state for t in done} == {TaskState.SUCCEEDED, TaskState.FAILED}
    wait_for(lambda: all((noted_folder() / str(t.pk)).exists() for t in tasks))

    calls = [(noted_folder() / str(t.pk)).read_text().split() for t in tasks]
    assert all(len(call) == 3 for call in calls), calls  # once per outcome
    # The worker's own finalizers' thread (in its main process, which has no state
    # connection to share) may take an outcome first: a sweep that met it already due.
    in_pool = [call for call in calls if call[1] != "batchtasks-finalizers"]
    assert in_pool, calls
    assert [call[2] for call in in_pool] == ["1"] * len(in_pool), calls


def test_the_tasks_behind_one_whose_process_died_are_given_back_not_lost(
    start_worker, record_dir: Path
) -> None:
    """A pool process killed from outside (the kernel's OOM killer) while it runs a task
    of a message: the tasks behind it never started, so they run again as they were,
    not as lost runs (each death ate into their ``max_lost_runs``: one of them failed).
    The task ahead of it ran, and its success, held to be written with the others, went
    with the process: that is a lost run (``worker.batches``)."""
    batched(per_message=4)
    dying = {"seconds": 0, "record": True, "die": True}
    tasks = BatchTask.submit_many("examples.sleep", [QUICK, dying, QUICK, QUICK])
    start_worker("w", SLEEP, concurrency=1, env=FAST)

    done = wait_final(*tasks, timeout=90)

    assert done[1].state == TaskState.FAILED  # it dies each time: its lost runs run out
    assert done[1].lost_runs == 3
    for task in (done[2], done[3]):
        assert task.state == TaskState.SUCCEEDED, task.error
        assert (task.attempt, task.lost_runs) == (1, 0), task.pk
        assert len(runs_of(record_dir, task.pk)) == 1
