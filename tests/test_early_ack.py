"""Messages of short runs acked when a pool process takes them (``worker.request``), so
the worker fetches its next message while they run; the others after their runs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from batchtasks import BatchTask, TaskState
from batchtasks.core.states import AttemptOutcome
from batchtasks.services.dispatch import run_of
from batchtasks.transport.depth import queue_depth
from batchtasks.transport.publish import ACK_EARLY, ACK_HEADER, Run, ack_headers
from tests.conftest import runs_of
from tests.test_batching import SLEEP, batched, outcomes
from tests.test_recovery import FAST
from tests.test_workers import wait_final
from tests.workers import wait_for

LONG = {"seconds": 3, "record": True}


def definition(run_seconds: float | None) -> SimpleNamespace:
    return SimpleNamespace(
        isolation="inline", timeout=None, soft_timeout=None, name="t", run_seconds=run_seconds
    )


def test_runs_measured_short_enough_for_their_message_are_acked_early(settings) -> None:
    settings.BATCHTASKS = {"EARLY_ACK_SECONDS": 0.05}
    assert run_of(1, 1, definition(0.001)).ack_early
    assert run_of(1, 1, definition(0.001), per_message=50).ack_early
    assert not run_of(1, 1, definition(0.001), per_message=51).ack_early
    assert not run_of(1, 1, definition(None)).ack_early  # not measured yet
    assert not run_of(1, 1, definition(0.2)).ack_early
    settings.BATCHTASKS = {"EARLY_ACK_SECONDS": 0}
    assert not run_of(1, 1, definition(0.001)).ack_early


def test_a_message_is_acked_early_only_if_every_run_in_it_may_be() -> None:
    early, late = Run(1, 1, ack_early=True), Run(2, 1)
    assert ack_headers([early, early]) == {ACK_HEADER: ACK_EARLY}
    assert ack_headers([early, late]) == {}
    assert ack_headers([late]) == {}


def running(task: BatchTask) -> bool:
    return BatchTask.objects.filter(pk=task.pk, state=TaskState.RUNNING).exists()


@pytest.mark.worker
@pytest.mark.parametrize("measured", [True, False], ids=["short", "not measured"])
def test_a_worker_fetches_its_next_message_while_a_short_run_goes_on(
    start_worker, record_dir: Path, measured: bool
) -> None:
    """With one pool process: acked early, the second message leaves the queue while the
    first runs; acked late, it waits there until the first run ends."""
    if measured:
        batched(per_message=1)
    tasks = BatchTask.submit_many("examples.sleep", [LONG, LONG])
    assert queue_depth(SLEEP[0]) == 2
    start_worker("w", SLEEP, concurrency=1)

    wait_for(lambda: any(running(t) for t in tasks), timeout=30)
    if measured:
        wait_for(lambda: queue_depth(SLEEP[0]) == 0, timeout=10)
    else:
        assert queue_depth(SLEEP[0]) == 1

    done = wait_final(*tasks, timeout=60)
    assert [t.state for t in done] == [TaskState.SUCCEEDED] * 2
    assert [len(runs_of(record_dir, t.pk)) for t in done] == [1, 1]


@pytest.mark.worker
def test_a_message_held_acked_by_a_killed_worker_is_published_again(
    start_worker, record_dir: Path
) -> None:
    """The killed worker held the second message, acked, behind its run: the broker has
    nothing to give back, the sweeper publishes the queued task again; the run cut short
    runs again as a lost run. Each runs to the end once."""
    batched(per_message=1)
    tasks = BatchTask.submit_many("examples.sleep", [LONG, LONG])
    a = start_worker("a", SLEEP, concurrency=1, env=FAST)
    wait_for(lambda: any(running(t) for t in tasks), timeout=30)
    wait_for(lambda: queue_depth(SLEEP[0]) == 0, timeout=10)
    cut = next(t for t in tasks if running(t))
    held = next(t for t in tasks if t.pk != cut.pk)

    a.kill()
    start_worker("b", SLEEP, concurrency=1, env=FAST)

    cut, held = wait_final(cut, held, timeout=60)
    assert (cut.state, cut.attempt, cut.lost_runs) == (TaskState.SUCCEEDED, 2, 1)
    assert outcomes(cut) == [AttemptOutcome.LOST, TaskState.SUCCEEDED]
    assert (held.state, held.attempt, held.lost_runs) == (TaskState.SUCCEEDED, 1, 0)
    assert len(runs_of(record_dir, held.pk)) == 1
    assert runs_of(record_dir, cut.pk)[-1][2] is not None  # ran to its end the second time
