"""The base class of task types and the contract between a plugin and its runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from django.utils.functional import cached_property

from .exceptions import ConfigurationError, TaskCancelled
from .params import check_declared


class TaskContext(Protocol):
    """What a running plugin can ask of whoever runs it."""

    task_id: int | None
    attempt: int
    worker: str

    def report_progress(self, percent: int, message: str) -> None:
        """Record progress (the runner decides when to write it)."""

    def cancel_requested(self) -> bool:
        """Whether someone asked this task to stop."""

    def load_task(self) -> Any:
        """The ``BatchTask`` row being run."""


@dataclass
class LocalContext:
    """A context for running a plugin directly, as unit tests of plugins do."""

    task_id: int | None = None
    attempt: int = 1
    worker: str = "local"
    cancelled: bool = False
    progress: list[tuple[int, str]] = field(default_factory=list)
    #: The row ``plugin.task`` returns, if the test has one.
    task: Any = None

    def report_progress(self, percent: int, message: str) -> None:
        self.progress.append((percent, message))

    def cancel_requested(self) -> bool:
        return self.cancelled

    def load_task(self) -> Any:
        if self.task is None:
            raise LookupError("This plugin is not running as a stored task, so it has no row.")
        return self.task


class BatchTaskPlugin:
    """A task type: subclass it, override ``run`` and register it with ``@batchtask``."""

    #: Set by ``@batchtask``.
    type_name: ClassVar[str] = ""
    #: Exceptions after which a failed attempt runs again (while attempts remain);
    #: ``PermanentFailure`` never does.
    retry_on: ClassVar[tuple[type[BaseException], ...]] = (Exception,)
    #: A dataclass declaring the parameters (``None``: any JSON is accepted). Submits
    #: whose parameters do not fit raise ``InvalidParameters`` before anything is written.
    Params: ClassVar[type | None] = None

    @classmethod
    def validate_params(cls, params: Any) -> None:
        """Check parameters at submit; raise ``InvalidParameters(message, fields={...})``.

        Checks them against ``Params`` when the type declares it. Override it for more
        (call ``super().validate_params(params)`` to keep that check); it runs in the
        submitting process, before anything is written.
        """
        if cls.Params is not None:
            check_declared(cls.Params, params, type_name=cls.type_name)

    def __init__(self, context: TaskContext | None = None) -> None:
        self.context: TaskContext = context if context is not None else LocalContext()

    def run(self, params: Any) -> Any:
        """Do the work; return a JSON-serialisable result or raise."""
        raise NotImplementedError

    @property
    def task_id(self) -> int | None:
        """The id of the ``BatchTask`` row being run."""
        return self.context.task_id

    @property
    def attempt(self) -> int:
        """Which attempt this is, from 1."""
        return self.context.attempt

    @cached_property
    def task(self) -> Any:
        """The ``batchtasks.models.BatchTask`` row (read once, on first use)."""
        return self.context.load_task()

    def parent_results(self) -> dict[int, Any]:
        """The results of the tasks this one depends on (``depends_on``): ``{parent id:
        result}`` in ``depends_on`` order, ``None`` for a parent that did not succeed
        (with ``on_parent_failure="run"``); a purged parent is left out. Read from the
        database."""
        return dict(self.context.load_task().parent_results())

    def progress(self, percent: float, message: str | None = None) -> None:
        """Report progress: ``percent`` from 0 to 100 and an optional short message."""
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            raise TypeError(f"progress percent must be a number from 0 to 100, not {percent!r}.")
        if not 0 <= percent <= 100:
            raise ValueError(f"progress percent must be from 0 to 100, not {percent!r}.")
        self.context.report_progress(int(percent), "" if message is None else str(message)[:500])

    def check_cancelled(self) -> None:
        """Raise ``TaskCancelled`` if cancel was requested; call it between units of work."""
        if self.context.cancel_requested():
            raise TaskCancelled(f"Task {self.task_id} was cancelled.")


class ExecutorPlugin(BatchTaskPlugin):
    """A task type that is an external program: register it with
    ``@batchtask(name, isolation="executor")`` and set ``command``.

    The program gets the parameters as JSON on stdin, its own empty working directory,
    and reports on stdout with lines ``Progress: 65 message`` (or ``Progress: text``),
    ``ResultData: <json>`` and ``ERROR: <message>`` (the lines after it are details);
    exit code 0 without ``ERROR:`` is success.
    """

    #: The program and its arguments (never run through a shell; no parameters here).
    command: ClassVar[list[str]] = []
    #: Environment variables the program gets, each from the named Django setting
    #: (read at run time): how secrets reach it, never through its arguments.
    environment: ClassVar[dict[str, str]] = {}

    def run(self, params: Any) -> Any:
        """Executors run only as programs: the worker starts ``command``."""
        raise ConfigurationError(
            f"Task type {self.type_name!r} is an executor program; it runs only with "
            "isolation='executor' (check the isolation of its definition)."
        )
