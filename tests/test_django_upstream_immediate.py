"""Django's ImmediateBackend tests, adapted to ``BatchTasksBackend`` and a real worker.

Adapted from Django 6.0.10's ``tests/tasks/test_immediate_backend.py`` (BSD licence,
Copyright (c) Django Software Foundation and individual contributors). The immediate
backend runs a task inside ``enqueue()``; here a task is ``READY`` when enqueued, a real
worker (``start_worker``) runs it, and ``result.refresh()`` shows the outcome, where
upstream asserts it at once. The framework's task logs of a run (``state=RUNNING``,
``state=...`` at the end) are written by the worker, so they are read from its log; the
``enqueued`` log is still written by the enqueuing process. Test names are upstream's,
``subTest`` loops are loops or ``parametrize``. Every other change is marked with a
``# changed:`` or ``# dropped:`` comment saying why.
"""

from __future__ import annotations

import logging
import re

import pytest
from asgiref.sync import async_to_sync
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from batchtasks import BatchTask
from batchtasks.backends import BatchTasksBackend
from batchtasks.core.states import FINAL_STATES
from tests.django_upstream import tasks as test_tasks
from tests.django_upstream.framework import (
    LOGGER,
    InvalidTask,
    TaskResultDoesNotExist,
    TaskResultStatus,
    default_task_backend,
    raises_message,
    task_backends,
)
from tests.workers import wait_for

# A record in the project's log format (LOGGING) starts with the date, then the level.
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d ", re.MULTILINE)


def run(start_worker, *results):
    """Start a worker for the test functions, wait until each task is final, refresh it."""
    worker = start_worker(queues=test_tasks.QUEUES)
    for result in results:
        wait_for(lambda r=result: BatchTask.objects.get(pk=int(r.id)).state in FINAL_STATES, 60)
        result.refresh()
    return worker


def task_logs(worker, result, level="DEBUG"):
    """The framework's log records (with tracebacks) about ``result`` in the worker's log,
    once its record of the end is there (task_finished follows the row's final write)."""

    def finished_logged():
        return any(
            f"Task id={result.id} path=" in line
            and ("state=SUCCESSFUL" in line or "state=FAILED" in line)
            for line in worker.log().splitlines()
        )

    wait_for(finished_logged, 60)
    records = RECORD_START.split(worker.log())
    return [
        r
        for r in records
        if f"Task id={result.id} path=" in r.partition("\n")[0]
        and logging.getLevelName(r.split()[1]) >= logging.getLevelName(level)
    ]


def assert_finished_in_order(result):
    assert result.is_finished is True
    assert result.started_at is not None
    assert result.last_attempted_at is not None
    assert result.finished_at is not None
    assert result.started_at >= result.enqueued_at
    assert result.finished_at >= result.started_at


@pytest.fixture(autouse=True)
def upstream_settings(settings):
    """Upstream's class-wide TASKS, with this backend (the workers use tests.settings')."""
    # changed: this backend instead of ImmediateBackend
    settings.TASKS = {"default": {"BACKEND": "batchtasks.backends.BatchTasksBackend", "QUEUES": []}}


def test_using_correct_backend():
    assert default_task_backend == task_backends["default"]
    assert isinstance(task_backends["default"], BatchTasksBackend)  # changed: this backend
    assert default_task_backend.alias == "default"
    assert default_task_backend.options == {}


@pytest.mark.worker
def test_enqueue_task(start_worker):
    results = [
        task.enqueue(1, two=3) for task in [test_tasks.noop_task, test_tasks.noop_task_async]
    ]
    # changed: READY until a worker runs it (this backend queues)
    assert [r.status for r in results] == [TaskResultStatus.READY] * 2

    run(start_worker, *results)

    for task, result in zip(
        [test_tasks.noop_task, test_tasks.noop_task_async], results, strict=True
    ):
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert_finished_in_order(result)
        assert result.return_value is None
        assert result.task == task
        assert result.args == [1]
        assert result.kwargs == {"two": 3}
        assert result.attempts == 1


@pytest.mark.worker
def test_enqueue_task_async(start_worker):
    async def enqueue_both():
        return [await t.aenqueue() for t in [test_tasks.noop_task, test_tasks.noop_task_async]]

    results = async_to_sync(enqueue_both)()
    # changed: READY until a worker runs it (this backend queues)
    assert [r.status for r in results] == [TaskResultStatus.READY] * 2

    run(start_worker, *results)

    for task, result in zip(
        [test_tasks.noop_task, test_tasks.noop_task_async], results, strict=True
    ):
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert_finished_in_order(result)
        assert result.return_value is None
        assert result.task == task
        assert result.args == []
        assert result.kwargs == {}
        assert result.attempts == 1


@pytest.mark.worker
@pytest.mark.parametrize(
    ("task", "exception", "message"),
    [
        (test_tasks.failing_task_value_error, ValueError, "This Task failed due to ValueError"),
        (test_tasks.failing_task_system_exit, SystemExit, "This Task failed due to SystemExit"),
    ],
    ids=["ValueError", "SystemExit"],
)
def test_catches_exception(start_worker, task, exception, message):
    result = task.enqueue()
    worker = run(start_worker, result)

    assert result.status == TaskResultStatus.FAILED
    with raises_message(ValueError, "Task failed"):
        result.return_value  # noqa: B018
    assert_finished_in_order(result)
    assert result.errors[0].exception_class == exception
    traceback = result.errors[0].traceback
    assert traceback and traceback.endswith(f"{exception.__name__}: {message}\n"), traceback
    assert result.task == task
    assert result.args == []
    assert result.kwargs == {}
    # changed: the ERROR log is the worker's, read from its log (checked last, not first)
    captured_logs = task_logs(worker, result, level="ERROR")
    assert len(captured_logs) == 1
    assert message in captured_logs[0]


@pytest.mark.django_db
def test_throws_keyboard_interrupt(caplog):
    # changed: the interrupt would happen in a worker, never in the enqueuing process: enqueue
    # neither raises it nor logs an error (no worker runs it: it would stop a pool process)
    caplog.set_level(logging.ERROR, logger=LOGGER)
    result = default_task_backend.enqueue(test_tasks.failing_task_keyboard_interrupt, [], {})

    assert result.status == TaskResultStatus.READY
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.worker
def test_complex_exception(start_worker):
    result = test_tasks.complex_exception.enqueue()
    worker = run(start_worker, result)
    # changed: the ERROR log is the worker's, read from its log
    assert task_logs(worker, result, level="ERROR")

    assert result.status == TaskResultStatus.FAILED
    with raises_message(ValueError, "Task failed"):
        result.return_value  # noqa: B018
    assert_finished_in_order(result)
    assert result._return_value is None
    assert result.errors[0].exception_class is ValueError
    assert 'ValueError(ValueError("This task failed"))' in result.errors[0].traceback
    assert result.task == test_tasks.complex_exception
    assert result.args == []
    assert result.kwargs == {}


@pytest.mark.worker
def test_complex_return_value(start_worker):
    result = test_tasks.complex_return_value.enqueue()
    worker = run(start_worker, result)
    # changed: the ERROR log is the worker's, read from its log
    assert task_logs(worker, result, level="ERROR")

    assert result.status == TaskResultStatus.FAILED
    assert_finished_in_order(result)
    assert result._return_value is None
    assert result.errors[0].exception_class is TypeError
    assert "Unsupported type" in result.errors[0].traceback


@pytest.mark.worker
def test_result(start_worker):
    result = default_task_backend.enqueue(test_tasks.calculate_meaning_of_life, [], {})
    run(start_worker, result)

    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 42


@pytest.mark.worker
def test_result_async(start_worker):
    result = async_to_sync(default_task_backend.aenqueue)(
        test_tasks.calculate_meaning_of_life, [], {}
    )
    run(start_worker, result)

    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 42


@pytest.mark.django_db
def test_cannot_get_result():
    # changed: this backend supports get_result: an unknown id does not exist (upstream's
    # immediate backend raises NotImplementedError); sync calls run outside the event loop
    assert default_task_backend.supports_get_result is True
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result("123")
    with pytest.raises(TaskResultDoesNotExist):
        async_to_sync(default_task_backend.aget_result)(123)


@pytest.mark.django_db
def test_cannot_refresh_result():
    # changed: this backend supports refresh: it reads the stored (READY) result again
    result = async_to_sync(default_task_backend.aenqueue)(
        test_tasks.calculate_meaning_of_life, (), {}
    )

    async_to_sync(result.arefresh)()
    result.refresh()

    assert result.status == TaskResultStatus.READY


def test_cannot_pass_run_after():
    # changed: this backend supports run_after (supports_defer), so validation accepts it
    assert default_task_backend.supports_defer is True
    default_task_backend.validate_task(
        test_tasks.failing_task_value_error.using(run_after=timezone.now())
    )


@pytest.mark.worker
def test_enqueue_logs(start_worker, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    result = test_tasks.noop_task.enqueue()
    worker = run(start_worker, result)

    # changed: "enqueued" is logged here, the other two by the worker (read from its log)
    (enqueued,) = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert "enqueued" in enqueued
    assert result.id in enqueued
    captured_logs = task_logs(worker, result)
    assert len(captured_logs) == 2
    assert "state=RUNNING" in captured_logs[0]
    assert "state=SUCCESSFUL" in captured_logs[1]


@pytest.mark.worker
def test_failed_logs(start_worker, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    result = test_tasks.failing_task_value_error.enqueue()
    worker = run(start_worker, result)

    # changed: "enqueued" is logged here, the other two by the worker (read from its log)
    assert len([r for r in caplog.records if r.name == LOGGER]) == 1
    captured_logs = task_logs(worker, result)
    assert len(captured_logs) == 2
    assert "state=RUNNING" in captured_logs[0]
    assert "state=FAILED" in captured_logs[1]


@pytest.mark.worker
def test_successful_task_no_none_in_logs(start_worker, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    result = test_tasks.noop_task.enqueue()
    worker = run(start_worker, result)

    assert result.status == TaskResultStatus.SUCCESSFUL
    # changed: the logs are this process's "enqueued" and the worker's run logs
    log_output = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    for line in [*log_output, *task_logs(worker, result)]:
        assert "None" not in line


@pytest.mark.worker
def test_takes_context(start_worker):
    result = test_tasks.get_task_id.enqueue()
    run(start_worker, result)

    assert result.return_value == result.id


@pytest.mark.worker
def test_context(start_worker):
    result = test_tasks.test_context.enqueue(1)
    run(start_worker, result)

    assert result.status == TaskResultStatus.SUCCESSFUL


QUEUE_1_ONLY = {
    # changed: this backend, with upstream's QUEUES
    "default": {"BACKEND": "batchtasks.backends.BatchTasksBackend", "QUEUES": ["queue-1"]}
}


def test_validate_on_enqueue():
    task_with_custom_queue_name = test_tasks.noop_task.using(queue_name="unknown_queue")

    with (
        override_settings(TASKS=QUEUE_1_ONLY),
        raises_message(InvalidTask, "Queue 'unknown_queue' is not valid for backend"),
    ):
        task_with_custom_queue_name.enqueue()


def test_validate_on_aenqueue():
    task_with_custom_queue_name = test_tasks.noop_task.using(queue_name="unknown_queue")

    with (
        override_settings(TASKS=QUEUE_1_ONLY),
        raises_message(InvalidTask, "Queue 'unknown_queue' is not valid for backend"),
    ):
        async_to_sync(task_with_custom_queue_name.aenqueue)()


@pytest.mark.worker
def test_doesnt_wait_until_transaction_commit_by_default(start_worker):
    # changed: this backend publishes on commit, so inside the transaction the task is
    # READY (not yet run); the worker runs it after the commit
    with transaction.atomic():
        result = test_tasks.noop_task.enqueue()

        assert result.enqueued_at is not None

        assert result.status == TaskResultStatus.READY

    run(start_worker, result)
    assert result.status == TaskResultStatus.SUCCESSFUL
