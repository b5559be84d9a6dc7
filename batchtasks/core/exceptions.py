"""The one exception hierarchy of batchtasks."""

from __future__ import annotations


class BatchTasksError(Exception):
    """Raised for every error batchtasks reports; catch this to catch them all."""


class ConfigurationError(BatchTasksError):
    """Raised when settings or a task type declaration cannot be used."""


class UnsafeStopFolder(ConfigurationError):
    """Raised when a worker's folder for stop requests exists but is not a folder that only
    the worker's own user may use (another owner, a group or other permission, a link)."""


class UnknownTaskType(BatchTasksError, LookupError):
    """Raised when a task type name is not registered."""

    def __init__(self, message: str, *, summary: str = "") -> None:
        super().__init__(message)
        #: The first sentences of the message (the name and close matches), without the
        #: list of every registered type.
        self.summary = summary or message


class FunctionModuleNotImported(UnknownTaskType):
    """Raised when a worker cannot import the module of a ``django.tasks`` function type
    (the one its definition row records), or the module does not register the type."""


class DuplicateTaskType(ConfigurationError):
    """Raised when two different classes register the same task type name."""


class InvalidTaskOption(BatchTasksError, ValueError):
    """Raised when an option of a task type or of a submit is out of range or unknown."""


class InvalidTokenOption(BatchTasksError, ValueError):
    """Raised when an API token's name, scope or lifetime cannot be used."""


class InvalidParameters(BatchTasksError, ValueError):
    """Raised when task parameters cannot be encoded, exceed the size limit, or do not
    match what their type declares (``fields`` then names each bad field)."""

    def __init__(self, message: str, *, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        #: What is wrong with each parameter, by name (empty when no field is to blame).
        self.fields: dict[str, str] = dict(fields or {})


class TaskTypeDisabled(BatchTasksError):
    """Raised when a task is submitted for a type whose definition is disabled."""


class PermanentFailure(BatchTasksError):
    """Raise from a plugin to fail the task at once, whatever attempts it has left."""


class TaskCancelled(BatchTasksError):
    """Raised inside a running plugin by ``check_cancelled()`` once cancel was requested."""


class ResultNotSerializable(BatchTasksError, TypeError):
    """Raised when a plugin returns a result that cannot be stored as JSON."""


class ResultTooLarge(BatchTasksError, ValueError):
    """Raised when a plugin's result is larger than ``BATCHTASKS['MAX_RESULT_BYTES']``."""


class TaskSkipped(BatchTasksError):
    """Recorded as the error of a task that a newer one with its unique key superseded
    (``on_conflict="supersede"``) before it ran; never raised in a plugin."""


class TaskStopped(TaskCancelled):
    """Raised inside a running plugin when its worker stops it after an ignored cancel."""


class UniqueKeyConflict(BatchTasksError):
    """Raised when a task cannot run again because an unfinished task holds its unique key."""


class InactivityTimeout(BatchTasksError):
    """Raised when a run reports no progress (an executor prints nothing) for longer than
    its type's ``inactivity_timeout``; the attempt fails and may run again."""

    #: What the attempt records as its error type.
    error_type = "batchtasks.InactivityTimeout"


class IsolatedRunFailed(BatchTasksError):
    """Raised in the pool process when a run in a child process or an executor failed;
    carries the error as the child saw it."""

    def __init__(
        self, message: str, *, error_type: str, details: str = "", retryable: bool | None = None
    ) -> None:
        super().__init__(message)
        #: What the attempt records as its error type (the child's exception class).
        self.error_type = error_type
        #: The child's traceback or the program's output (the attempt's traceback field).
        self.details = details
        #: Whether the plugin's ``retry_on`` allows a retry (``None``: decide here).
        self.retryable = retryable


class ExecutorFailed(IsolatedRunFailed):
    """Raised when an executor program exits with a non-zero code or prints ``ERROR:``."""

    def __init__(self, message: str, *, details: str = "") -> None:
        super().__init__(message, error_type="batchtasks.ExecutorFailed", details=details)
