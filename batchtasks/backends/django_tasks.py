"""A ``django.tasks`` backend (DEP 14) that runs ``@task`` functions as batch tasks.

Configure it with ``TASKS = {"default": {"BACKEND": "batchtasks.backends.BatchTasksBackend"}}``.
Django 6 ships ``django.tasks``; on Django 5.2 the ``django-tasks`` backport is used.

* Each ``@task`` function is the task type named by its module path
  (``myapp.tasks.send_report``), registered when the first ``Task`` of the function is
  created (on import of its module). Its definition row records the module, and a worker
  that meets a task of the type without knowing it imports that module (listing it in
  ``BATCHTASKS["PLUGINS"]`` imports it at start instead). Only rows this backend wrote
  name a module: a type name alone (from a request) never makes a process import one.
* Type options in code: ``OPTIONS = {"TYPES": {"myapp.tasks.send_report": {...}}}`` with
  any ``@batchtask`` option (``max_concurrency``, ``timeout``, ``max_attempts``, ...);
  ``BATCHTASKS["TYPES"]`` overrides them, the definition row (the admin) decides live.
* Queues: the ``"default"`` queue name maps to the type's own queue,
  ``batch.<type name>`` (or what ``BATCHTASKS["TYPES"][name]["queue"]`` says); any other
  ``queue_name`` maps to ``batch.<queue_name>``. Both apply when the type's definition row
  is created; afterwards the row (the admin) decides.
* Priority orders the tasks of a type that wait for the dispatcher (types or queues with
  a concurrency limit, or a backlog); Django's default (0) leaves the type's own priority
  in force. ``run_after`` holds a task back until then.
* Statuses: new and queued are ``READY``, running is ``RUNNING``, succeeded is
  ``SUCCESSFUL``; failed, cancelled and skipped are ``FAILED`` (a cancelled or skipped task
  without an error of its own gets one: ``TaskCancelled`` or ``TaskSkipped``).
* Signals: ``task_enqueued`` is sent on enqueue; ``task_started`` in the worker once an
  attempt is claimed; ``task_finished`` once the task is final and its outcome written (in
  the worker, or where a waiting task was cancelled), not for an attempt that runs again.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from django.utils import timezone

from .. import signals
from ..core.conf import get_settings
from ..core.exceptions import BatchTasksError, TaskCancelled, TaskSkipped, UnknownTaskType
from ..core.plugin import BatchTaskPlugin
from ..core.registry import batchtask, registry
from ..core.states import TaskState
from ..models import BatchTask
from ..services.events import send_robustly

#: ``django.tasks`` when Django has it (6.0+), else the ``django_tasks`` backport.
FRAMEWORK = "django.tasks" if importlib.util.find_spec("django.tasks") else "django_tasks"

if TYPE_CHECKING:
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import (
        DEFAULT_TASK_PRIORITY,
        Task,
        TaskContext,
        TaskError,
        TaskResult,
        TaskResultStatus,
    )
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json
else:
    _base = importlib.import_module(f"{FRAMEWORK}.base")
    Task, TaskContext, TaskError = _base.Task, _base.TaskContext, _base.TaskError
    TaskResult, TaskResultStatus = _base.TaskResult, _base.TaskResultStatus
    DEFAULT_TASK_PRIORITY = _base.DEFAULT_TASK_PRIORITY
    BaseTaskBackend = importlib.import_module(f"{FRAMEWORK}.backends.base").BaseTaskBackend
    TaskResultDoesNotExist = importlib.import_module(
        f"{FRAMEWORK}.exceptions"
    ).TaskResultDoesNotExist
    normalize_json = importlib.import_module(
        "django.utils.json" if FRAMEWORK == "django.tasks" else "django_tasks.utils"
    ).normalize_json
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
    # Django's API has no dependencies: a task waiting for its parents is READY to it.
    TaskState.BLOCKED: TaskResultStatus.READY,
    TaskState.QUEUED: TaskResultStatus.READY,
    TaskState.RUNNING: TaskResultStatus.RUNNING,
    TaskState.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    TaskState.FAILED: TaskResultStatus.FAILED,
    TaskState.CANCELLED: TaskResultStatus.FAILED,
    TaskState.SKIPPED: TaskResultStatus.FAILED,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchTaskContext(TaskContext):
    """Django's task context, plus what a batch task plugin can do while it runs."""

    plugin: BatchTaskPlugin

    def progress(self, percent: float, message: str | None = None) -> None:
        """Report progress, 0 to 100, with an optional short message (written throttled,
        fenced by the attempt, shown in the admin, the monitor and the API)."""
        self.plugin.progress(percent, message)

    def check_cancelled(self) -> None:
        """Raise ``TaskCancelled`` once a cancel was asked for (the task ends cancelled)."""
        self.plugin.check_cancelled()


class FunctionPlugin(BatchTaskPlugin):
    """Runs a ``django.tasks`` function; one subclass per function."""

    django_task: ClassVar[Any]

    def run(self, params: Any) -> Any:
        """Call the function with the enqueued arguments (an async one in an event loop)."""
        task, args, kwargs = self.django_task, params["args"], params["kwargs"]
        if task.takes_context:
            result = _result_of(_load(str(self.task_id)))
            args = [BatchTaskContext(task_result=result, plugin=self), *args]
        # Django's backends store what normalize_json makes of the value, and fail the task
        # with its TypeError ("Unsupported type") when it cannot.
        return normalize_json(task.call(*args, **kwargs))


def _send_started(sender: Any, task: BatchTask, **kwargs: Any) -> None:
    """Django's ``task_started``, from batchtasks' own (sent once the attempt is claimed),
    described from the row that signal carries (read once for all its receivers)."""
    _send(task_started, _result_of(task))


def _send_finished(sender: Any, task: BatchTask, **kwargs: Any) -> None:
    """Django's ``task_finished``, from batchtasks' own (sent once the task is final and its
    outcome written: not for an attempt that will run again)."""
    result = _result_of(task)
    if result.status != TaskResultStatus.FAILED or not result.errors:
        _send(task_finished, result)
        return
    # Django's receiver logs the exception being handled (sys.exc_info()): the stored one.
    try:
        raise TaskFailedError(result.errors[-1].traceback or result.errors[-1].exception_class_path)
    except TaskFailedError:
        _send(task_finished, result)


class TaskFailedError(Exception):
    """Stands for a failed task's stored error while ``task_finished`` is sent (its message
    is the task's traceback), so Django's log of the failure shows it."""


def _send(signal: Any, result: Any) -> None:
    """Send Django's ``signal``; a failing receiver is logged and never changes the outcome."""
    send_robustly(signal, BatchTasksBackend, result.id, task_result=result)


def type_name(task: Task[Any, Any]) -> str:
    """The batch task type of a ``django.tasks`` function: its module path."""
    return task.module_path


def register(task: Task[Any, Any]) -> str:
    """Register ``task``'s function as a batch task type, once (the first ``Task`` of a
    function decides its type's queue and options)."""
    name = type_name(task)
    known = _registered_function(name)
    if known is not None and known.func is task.func:
        return name
    options = dict(_type_options(task, name))
    if task.queue_name != "default":
        options.setdefault("queue", get_settings().QUEUE_PREFIX + task.queue_name)
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
    # Recorded on the definition row: a worker that meets the type imports this module.
    registry.register(replace(registry.get(name), function_module=task.func.__module__))
    signals.task_started.connect(_send_started, sender=plugin, weak=False)
    signals.task_finished.connect(_send_finished, sender=plugin, weak=False)
    return name


def _registered_function(name: str) -> Any:
    """The ``Task`` registered as type ``name``, if it is a function's type."""
    if name not in registry:
        return None
    plugin = registry.get(name).plugin
    return plugin.django_task if issubclass(plugin, FunctionPlugin) else None


def _type_options(task: Task[Any, Any], name: str) -> dict[str, Any]:
    """``OPTIONS["TYPES"][name]`` of the task's backend: its type's options in code."""
    try:
        options = task.get_backend().options
    except Exception:  # not configured (yet): the type gets the defaults
        return {}
    types = options.get("TYPES", {}) if isinstance(options, dict) else {}
    found = types.get(name, {}) if isinstance(types, dict) else None
    if not isinstance(found, dict):
        raise InvalidTask(
            f"TASKS OPTIONS['TYPES'][{name!r}] must be a dict of task type options "
            f"(max_concurrency, timeout, max_attempts, ...), not {found!r}."
        )
    return found


class BatchTasksBackend(BaseTaskBackend):
    """Runs ``django.tasks`` functions as durable batch tasks on the Celery workers."""

    supports_defer = True
    supports_priority = True
    supports_get_result = True
    supports_async_task = True

    def validate_task(self, task: Task[Any, Any]) -> None:
        """Django's checks, then register the function as a batch task type."""
        super().validate_task(_with_aware_run_after(task))
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
            # Django's default priority leaves the type's own (the definition's) in force.
            priority=None if task.priority == DEFAULT_TASK_PRIORITY else task.priority,
            run_after=task.run_after,
        )
        result = replace(pending, id=str(row.pk), enqueued_at=row.created_at)
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult[Any]:
        """The task's result as stored now, or ``TaskResultDoesNotExist``."""
        return _result_of(_load(result_id), self.alias)


def _with_aware_run_after(task: Task[Any, Any]) -> Task[Any, Any]:
    """``task`` as Django's checks take it: a ``timedelta`` ``run_after`` (which Django's
    docs allow, but whose ``USE_TZ`` check fails with ``AttributeError``) as an aware
    datetime. The task keeps its ``timedelta``: each enqueue counts it from the database's
    clock, as ``BatchTask.submit`` does."""
    if not isinstance(task.run_after, timedelta):
        return task
    # A copy made without the dataclass's __init__, whose __post_init__ validates again.
    view = object.__new__(type(task))
    for item in fields(task):
        object.__setattr__(view, item.name, getattr(task, item.name))
    object.__setattr__(view, "run_after", timezone.now() + task.run_after)
    return view


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
    """The ``Task`` of a row's function, its module imported if need be (the module its
    definition row recorded; a row without one is not a function's)."""
    name, module = row.definition.name, row.definition.function_module
    if module:
        registry.learn_function(name, module)
    try:
        plugin = registry.get(name).plugin
    except UnknownTaskType:
        plugin = None
    if plugin is None or not issubclass(plugin, FunctionPlugin):
        raise TaskResultDoesNotExist(f"{row.pk} is not a task of a django.tasks function.")
    return plugin.django_task


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


#: The error of a task that ended without one: what stopped it.
ENDED_WITHOUT_ERROR: dict[str, str] = {
    TaskState.CANCELLED: f"{TaskCancelled.__module__}.{TaskCancelled.__qualname__}",
    TaskState.SKIPPED: f"{TaskSkipped.__module__}.{TaskSkipped.__qualname__}",
}


def _errors(row: BatchTask, attempts: list[Any]) -> list[TaskError]:
    """One error per failed attempt; the last carries the task's traceback. A task
    cancelled or superseded without an error gets one naming why it stopped."""
    errors = _attempt_errors(row, attempts)
    if row.state in ENDED_WITHOUT_ERROR and not row.error_type:
        errors.append(TaskError(exception_class_path=ENDED_WITHOUT_ERROR[row.state], traceback=""))
    return errors


def _attempt_errors(row: BatchTask, attempts: list[Any]) -> list[TaskError]:
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
