"""Django's tests of tasks (``Task``, ``using()``, results), adapted to ``BatchTasksBackend``.

Adapted from Django 6.0.10's ``tests/tasks/test_tasks.py`` (BSD licence, Copyright (c)
Django Software Foundation and individual contributors). Upstream's class-wide settings
(default ``DummyBackend`` with queues ``default`` and ``queue_1``, an ``immediate`` backend
without queue validation, a ``missing`` one) become the same with this backend for
``default`` and ``immediate``. Test names are upstream's, ``subTest`` loops are loops.
Tests that need a run task use a real worker instead of the immediate backend. Every
other change is marked with a ``# changed:`` or ``# dropped:`` comment saying why.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings
from django.utils import timezone
from django.utils.module_loading import import_string

from batchtasks import BatchTask
from batchtasks.backends import BatchTasksBackend
from batchtasks.core.states import FINAL_STATES
from tests.django_upstream import tasks as test_tasks
from tests.django_upstream.framework import (
    DEFAULT_TASK_QUEUE_NAME,
    TASK_MAX_PRIORITY,
    TASK_MIN_PRIORITY,
    InvalidTask,
    InvalidTaskBackend,
    Task,
    TaskResultDoesNotExist,
    TaskResultMismatch,
    TaskResultStatus,
    default_task_backend,
    raises_message,
    task,
    task_backends,
)
from tests.workers import wait_for

BACKEND = "batchtasks.backends.BatchTasksBackend"
TASKS = {
    # changed: this backend instead of DummyBackend and ImmediateBackend
    "default": {"BACKEND": BACKEND, "QUEUES": ["default", "queue_1"]},
    "immediate": {"BACKEND": BACKEND, "QUEUES": []},
    "missing": {"BACKEND": "does.not.exist"},
}


@pytest.fixture(autouse=True)
def upstream_settings(settings):
    settings.TASKS, settings.USE_TZ = TASKS, True
    # dropped: default_task_backend.clear(), DummyBackend's (this backend's results are rows)


def test_using_correct_backend():
    assert default_task_backend == task_backends["default"]
    assert isinstance(task_backends["default"], BatchTasksBackend)  # changed: this backend


def test_task_decorator():
    assert isinstance(test_tasks.noop_task, Task)
    assert isinstance(test_tasks.noop_task_async, Task)
    assert isinstance(test_tasks.noop_task_from_bare_decorator, Task)


@pytest.mark.django_db
def test_enqueue_task():
    result = test_tasks.noop_task.enqueue()

    assert result.status == TaskResultStatus.READY
    assert result.task == test_tasks.noop_task
    assert result.args == []
    assert result.kwargs == {}

    # changed: DummyBackend's results list -> the backend stores it, get_result reads it back
    assert default_task_backend.get_result(result.id) == result


@pytest.mark.django_db
def test_enqueue_task_async():
    result = async_to_sync(test_tasks.noop_task.aenqueue)()

    assert result.status == TaskResultStatus.READY
    assert result.task == test_tasks.noop_task
    assert result.args == []
    assert result.kwargs == {}

    # changed: DummyBackend's results list -> the backend stores it, get_result reads it back
    assert default_task_backend.get_result(result.id) == result


def test_enqueue_with_invalid_argument():
    with raises_message(TypeError, "Unsupported type"):
        test_tasks.noop_task.enqueue(datetime.now())


def test_aenqueue_with_invalid_argument():
    with raises_message(TypeError, "Unsupported type"):
        async_to_sync(test_tasks.noop_task.aenqueue)(datetime.now())


def test_using_priority():
    assert test_tasks.noop_task.priority == 0
    assert test_tasks.noop_task.using(priority=1).priority == 1
    assert test_tasks.noop_task.priority == 0


def test_using_queue_name():
    assert test_tasks.noop_task.queue_name == DEFAULT_TASK_QUEUE_NAME
    assert test_tasks.noop_task.using(queue_name="queue_1").queue_name == "queue_1"
    assert test_tasks.noop_task.queue_name == DEFAULT_TASK_QUEUE_NAME


def test_using_run_after():
    now = timezone.now()

    assert test_tasks.noop_task.run_after is None
    assert test_tasks.noop_task.using(run_after=now).run_after == now
    assert test_tasks.noop_task.run_after is None


def test_using_unknown_backend():
    assert test_tasks.noop_task.backend == "default"

    with raises_message(InvalidTaskBackend, "The connection 'unknown' doesn't exist."):
        test_tasks.noop_task.using(backend="unknown")


def test_using_missing_backend():
    assert test_tasks.noop_task.backend == "default"

    with raises_message(
        InvalidTaskBackend, "Could not find backend 'does.not.exist': No module named 'does'"
    ):
        test_tasks.noop_task.using(backend="missing")


def test_using_creates_new_instance():
    new_task = test_tasks.noop_task.using()

    assert new_task == test_tasks.noop_task
    assert new_task is not test_tasks.noop_task


def test_chained_using():
    now = timezone.now()

    run_after_task = test_tasks.noop_task.using(run_after=now)
    assert run_after_task.run_after == now

    priority_task = run_after_task.using(priority=10)
    assert priority_task.priority == 10
    assert priority_task.run_after == now

    assert run_after_task.priority == 0


@pytest.mark.django_db
def test_refresh_result():
    result = async_to_sync(test_tasks.noop_task.aenqueue)()

    original_result = dataclasses.asdict(result)

    result.refresh()  # changed: outside the event loop (this backend reads the database)

    assert dataclasses.asdict(result) == original_result

    async_to_sync(result.arefresh)()

    assert dataclasses.asdict(result) == original_result


def test_naive_datetime():
    with raises_message(InvalidTask, "run_after must be an aware datetime."):
        test_tasks.noop_task.using(run_after=datetime.now())


def test_invalid_priority():
    message = (
        f"priority must be a whole number between {TASK_MIN_PRIORITY} and {TASK_MAX_PRIORITY}."
    )
    for priority in [-101, 101, 3.1]:
        with raises_message(InvalidTask, message):
            test_tasks.noop_task.using(priority=priority)

    test_tasks.noop_task.using(priority=100)
    test_tasks.noop_task.using(priority=-100)
    test_tasks.noop_task.using(priority=0)


def test_unknown_queue_name():
    with raises_message(InvalidTask, "Queue 'queue-2' is not valid for backend."):
        test_tasks.noop_task.using(queue_name="queue-2")
    # Validation is bypassed when the backend QUEUES is an empty list.
    assert (
        test_tasks.noop_task.using(queue_name="queue-2", backend="immediate").queue_name
        == "queue-2"
    )


def test_call_task():
    assert test_tasks.calculate_meaning_of_life.call() == 42


def test_call_task_async():
    assert async_to_sync(test_tasks.calculate_meaning_of_life.acall)() == 42


def test_call_async_task():
    assert async_to_sync(test_tasks.noop_task_async.acall)() is None


def test_call_async_task_sync():
    assert test_tasks.noop_task_async.call() is None


@pytest.mark.django_db
def test_get_result():
    result = default_task_backend.enqueue(test_tasks.noop_task, (), {})

    new_result = test_tasks.noop_task.get_result(result.id)

    assert result == new_result


@pytest.mark.django_db
def test_get_result_async():
    async def enqueue_and_get():
        result = await default_task_backend.aenqueue(test_tasks.noop_task, (), {})
        return result, await test_tasks.noop_task.aget_result(result.id)

    result, new_result = async_to_sync(enqueue_and_get)()

    assert result == new_result


@pytest.mark.django_db
def test_get_missing_result():
    # changed: the sync call runs outside the event loop (this backend reads the database)
    with pytest.raises(TaskResultDoesNotExist):
        test_tasks.noop_task.get_result("123")

    with pytest.raises(TaskResultDoesNotExist):
        async_to_sync(test_tasks.noop_task.aget_result)("123")


@pytest.mark.django_db
def test_get_incorrect_result():
    result = default_task_backend.enqueue(test_tasks.noop_task_async, (), {})
    with raises_message(TaskResultMismatch, "Task does not match"):
        test_tasks.noop_task.get_result(result.id)


@pytest.mark.django_db
def test_get_incorrect_result_async():
    async def enqueue_and_get():
        result = await default_task_backend.aenqueue(test_tasks.noop_task_async, (), {})
        await test_tasks.noop_task.aget_result(result.id)

    with raises_message(TaskResultMismatch, "Task does not match"):
        async_to_sync(enqueue_and_get)()


def test_invalid_function():
    def local_function():  # changed: stands in for upstream's test method (no class here)
        pass

    for invalid_function in [any, local_function]:
        with raises_message(InvalidTask, "Task function must be defined at a module level."):
            task()(invalid_function)


def test_get_backend():
    assert test_tasks.noop_task.backend == "default"
    # changed: this backend instead of DummyBackend and ImmediateBackend
    assert isinstance(test_tasks.noop_task.get_backend(), BatchTasksBackend)

    immediate_task = test_tasks.noop_task.using(backend="immediate")
    assert immediate_task.backend == "immediate"
    assert isinstance(immediate_task.get_backend(), BatchTasksBackend)


def test_name():
    assert test_tasks.noop_task.name == "noop_task"
    assert test_tasks.noop_task_async.name == "noop_task_async"


def test_module_path():
    # changed: the module is tests.django_upstream.tasks, not tasks.tasks
    assert test_tasks.noop_task.module_path == "tests.django_upstream.tasks.noop_task"
    assert test_tasks.noop_task_async.module_path == "tests.django_upstream.tasks.noop_task_async"

    assert import_string(test_tasks.noop_task.module_path) is test_tasks.noop_task
    assert import_string(test_tasks.noop_task_async.module_path) is test_tasks.noop_task_async


@override_settings(TASKS={})
def test_no_backends():
    with pytest.raises(InvalidTaskBackend):
        test_tasks.noop_task.enqueue()


def failed_result(start_worker):
    """A task that failed on a real worker (upstream: on the immediate backend)."""
    # changed: run by a worker; upstream's assertLogs is dropped: the worker logs the failure
    result = test_tasks.failing_task_value_error.enqueue()
    start_worker(queues=test_tasks.QUEUES)
    wait_for(lambda: BatchTask.objects.get(pk=int(result.id)).state in FINAL_STATES, 60)
    result.refresh()
    return result


@pytest.mark.worker
def test_task_error_invalid_exception(start_worker):
    immediate_task = failed_result(start_worker)

    assert len(immediate_task.errors) == 1

    object.__setattr__(immediate_task.errors[0], "exception_class_path", "subprocess.run")

    with raises_message(ValueError, "'subprocess.run' does not reference a valid exception."):
        immediate_task.errors[0].exception_class  # noqa: B018


@pytest.mark.worker
def test_task_error_unknown_module(start_worker):
    immediate_task = failed_result(start_worker)

    assert len(immediate_task.errors) == 1

    object.__setattr__(immediate_task.errors[0], "exception_class_path", "does.not.exist")

    with pytest.raises(ImportError):
        immediate_task.errors[0].exception_class  # noqa: B018


def test_takes_context_without_taking_context():
    with raises_message(
        InvalidTask, "Task takes context but does not have a first argument of 'context'."
    ):
        task(takes_context=True)(test_tasks.calculate_meaning_of_life.func)
