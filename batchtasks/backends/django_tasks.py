"""A ``django.tasks`` backend (DEP 14) that runs ``@task`` functions as batch tasks.

Configure it with ``TASKS = {"default": {"BACKEND": "batchtasks.backends.BatchTasksBackend"}}``.
Django 6 ships ``django.tasks``; on Django 5.2 the ``django-tasks`` backport is used.

* Each ``@task`` function is the task type named by its module path
  (``myapp.tasks.send_report``), registered when the ``Task`` is created (so on import of
  its module) and again on enqueue. Workers learn it by importing the module: list it in
  ``BATCHTASKS["PLUGINS"]``.
* Queues: the ``"default"`` queue name maps to the type's own queue,
  ``batch.<type name>`` (or what ``BATCHTASKS["TYPES"][name]["queue"]`` says); any other
  ``queue_name`` maps to ``batch.<queue_name>``. Both apply when the type's definition row
  is created; afterwards the row (the admin) decides.
* Priority orders the tasks of a type that wait for the dispatcher (types or queues with
  a concurrency limit, or a backlog); ``run_after`` holds a task back until then.
* Statuses: new and queued are ``READY``, running is ``RUNNING``, succeeded is
  ``SUCCESSFUL``; failed, cancelled and skipped are ``FAILED``.
* Signals: ``task_enqueued`` is sent on enqueue; ``task_started`` and ``task_finished`` in
  the worker, around the call of the function (before the outcome is written).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import traceback
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from django.utils.module_loading import import_string

from ..core.conf import get_settings
from ..core.exceptions import BatchTasksError
from ..core.plugin import BatchTaskPlugin
from ..core.registry import batchtask, registry
from ..core.states import TaskState
from ..models import BatchTask

logger = logging.getLogger(__name__)

#: ``django.tasks`` when Django has it (6.0+), else the ``django_tasks`` backport.
FRAMEWORK = "django.tasks" if importlib.util.find_spec("django.tasks") else "django_tasks"

if TYPE_CHECKING:
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started
else:
    _base = importlib.import_module(f"{FRAMEWORK}.base")
    Task, TaskContext, TaskError = _base.Task, _base.TaskContext, _base.TaskError
    TaskResult, TaskResultStatus = _base.TaskResult, _base.TaskResultStatus
    BaseTaskBackend = importlib.import_module(f"{FRAMEWORK}.backends.base").BaseTaskBackend
    TaskResultDoesNotExist = importlib.import_module(
        f"{FRAMEWORK}.exceptions"
    ).TaskResultDoesNotExist
    _signals = importlib.import_module(f"{FRAMEWORK}.signals")
    task_enqueued, task_started = _signals.task_enqueued, _signals.task_started
    task_finished = _signals.task_finished

_exceptions = importlib.import_module(f"{FRAMEWORK}.exceptions")
#: The framework's "this Task is invalid" error (``InvalidTask`` in Django 6).
InvalidTask: type[Exception] = getattr(_exceptions, "InvalidTask", None) or (
    _exceptions.InvalidTaskError
)

STATUSES: dict[str, str] = {
    TaskState.NEW: TaskResultStatus.READY,
    TaskState.QUEUED: TaskResultStatus.READY,
    TaskState.RUNNING: TaskResultStatus.RUNNING,
    TaskState.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    TaskState.FAILED: TaskResultStatus.FAILED,
    TaskState.CANCELLED: TaskResultStatus.FAILED,
    TaskState.SKIPPED: TaskResultStatus.FAILED,
}


class FunctionPlugin(BatchTaskPlugin):
    """Runs a ``django.tasks`` function; one subclass per function."""

    django_task: ClassVar[Any]

    def run(self, params: Any) -> Any:
        """Call the function with the enqueued arguments, sending Django's task signals."""
        task, args, kwargs = self.django_task, params["args"], params["kwargs"]
        result = _running_result(self.task_id)
        if task.takes_context:
            args = [TaskContext(task_result=result), *args]
        _send(task_started, result)
        try:
            value = task.call(*args, **kwargs)
        except BaseException as exc:
            _send(task_finished, _finished(result, TaskResultStatus.FAILED, errors=[_error(exc)]))
            raise
        _send(task_finished, _finished(result, TaskResultStatus.SUCCESSFUL, value=value))
        return value


def _running_result(task_id: int | None) -> Any:
    """The ``TaskResult`` of the row being run, or ``None`` outside a worker."""
    return None if task_id is None else _result_of(_load(str(task_id)))


def _finished(result: Any, status: str, *, value: Any = None, errors: Any = ()) -> Any:
    if result is None:
        return None
    done = replace(result, status=status, errors=[*result.errors, *errors])
    object.__setattr__(done, "_return_value", value)
    return done


def _send(signal: Any, result: Any) -> None:
    """Send ``signal``; a failing receiver is logged and never changes the outcome."""
    if result is None:
        return
    for receiver, error in signal.send_robust(BatchTasksBackend, task_result=result):
        if isinstance(error, Exception):
            logger.error(
                "batchtasks django.tasks signal receiver failed receiver=%r task=%s",
                receiver,
                result.id,
                exc_info=error,
            )


def _error(exc: BaseException) -> Any:
    cls = type(exc)
    return TaskError(
        exception_class_path=f"{cls.__module__}.{cls.__qualname__}",
        traceback="".join(traceback.format_exception(exc)),
    )


def type_name(task: Task[Any, Any]) -> str:
    """The batch task type of a ``django.tasks`` function: its module path."""
    return task.module_path


def register(task: Task[Any, Any]) -> str:
    """Register ``task``'s function as a batch task type (again: replaces it)."""
    name = type_name(task)
    options: dict[str, Any] = {}
    if task.queue_name != "default":
        options["queue"] = get_settings().QUEUE_PREFIX + task.queue_name
    plugin = type(
        "FunctionPlugin",
        (FunctionPlugin,),
        {
            "__module__": __name__,
            "__qualname__": f"FunctionPlugin[{name}]",
            "__doc__": task.func.__doc__ or f"The django.tasks function {name}.",
            "django_task": task,
        },
    )
    try:
        batchtask(name, **options)(plugin)
    except BatchTasksError as exc:
        raise InvalidTask(str(exc)) from exc
    return name


class BatchTasksBackend(BaseTaskBackend):
    """Runs ``django.tasks`` functions as durable batch tasks on the Celery workers."""

    supports_defer = True
    supports_priority = True
    supports_get_result = True
    supports_async_task = True

    def validate_task(self, task: Task[Any, Any]) -> None:
        """Django's checks, then register the function as a batch task type."""
        super().validate_task(task)
        register(task)

    def enqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any]:
        """Submit a batch task; it is published when the caller's transaction commits."""
        self.validate_task(task)
        # TaskResult normalises the arguments to JSON and raises TypeError if it cannot.
        pending: TaskResult[Any] = TaskResult(
            task=task,
            id="",
            status=TaskResultStatus.READY,
            enqueued_at=None,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=list(args),
            kwargs=dict(kwargs),
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        row = BatchTask.submit(
            type_name(task),
            {"args": pending.args, "kwargs": pending.kwargs},
            priority=task.priority,
            run_after=task.run_after,
        )
        result = replace(pending, id=str(row.pk), enqueued_at=row.created_at)
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult[Any]:
        """The task's result as stored now, or ``TaskResultDoesNotExist``."""
        return _result_of(_load(result_id), self.alias)


def _load(result_id: str) -> BatchTask:
    try:
        return (
            BatchTask.objects.select_related("definition")
            .prefetch_related("attempts")
            .get(pk=int(result_id))
        )
    except (ValueError, TypeError, BatchTask.DoesNotExist):
        raise TaskResultDoesNotExist(result_id) from None


def _task_of(row: BatchTask) -> Task[Any, Any]:
    spec = registry.get(row.definition.name) if row.definition.name in registry else None
    plugin = spec.plugin if spec is not None else None
    if plugin is not None and issubclass(plugin, FunctionPlugin):
        return plugin.django_task
    try:
        found = import_string(row.definition.name)
    except ImportError:
        found = None
    if not isinstance(found, Task):
        raise TaskResultDoesNotExist(f"{row.pk} is not a task of a django.tasks function.")
    return found


def _result_of(row: BatchTask, alias: str | None = None) -> TaskResult[Any]:
    """A ``TaskResult`` describing the row."""
    task = _task_of(row)
    params = row.params or {}
    attempts = list(row.attempts.all())
    workers = [a.worker for a in attempts]
    if row.state == TaskState.RUNNING:
        workers.append(row.worker)
    result: TaskResult[Any] = TaskResult(
        task=task,
        id=str(row.pk),
        status=TaskResultStatus(STATUSES[row.state]),
        enqueued_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        last_attempted_at=row.started_at,
        args=params.get("args", []),
        kwargs=params.get("kwargs", {}),
        backend=alias or task.backend,
        errors=_errors(row, attempts),
        worker_ids=workers,
    )
    object.__setattr__(result, "_return_value", row.result)
    return result


def _errors(row: BatchTask, attempts: list[Any]) -> list[TaskError]:
    """One error per failed attempt; the last carries the task's traceback."""
    failed = [a for a in attempts if a.error_type]
    errors = [TaskError(exception_class_path=_path(a.error_type), traceback="") for a in failed]
    if row.error_type and errors:
        errors[-1] = replace(errors[-1], traceback=row.error_traceback)
    elif row.error_type:
        errors.append(
            TaskError(exception_class_path=_path(row.error_type), traceback=row.error_traceback)
        )
    return errors


def _path(error_type: str) -> str:
    """Django's class path: batchtasks writes builtins without their module."""
    return error_type if "." in error_type else f"builtins.{error_type}"
