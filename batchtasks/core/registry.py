"""Task types declared in code: the ``@batchtask`` decorator and the registry it fills."""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from django.utils.text import get_text_list
from django.utils.translation import gettext as _

from .exceptions import (
    ConfigurationError,
    DuplicateTaskType,
    FunctionModuleNotImported,
    InvalidTaskOption,
    UnknownTaskType,
)
from .limits import parse_rate
from .names import NAME_RULE, is_name
from .params import check_params_class
from .schedules import check_declared
from .states import PRIORITY_MAX, PRIORITY_MIN, Isolation, Priority

if TYPE_CHECKING:
    from .plugin import BatchTaskPlugin

P = TypeVar("P", bound="type[BatchTaskPlugin]")

#: The options ``@batchtask`` accepts; they are the editable fields of a definition.
OPTIONS = (
    "queue",
    "max_concurrency",
    "max_concurrency_per_key",
    "rate_limit",
    "priority",
    "timeout",
    "soft_timeout",
    "max_attempts",
    "max_lost_runs",
    "retry_backoff",
    "retry_backoff_max",
    "retention",
    "isolation",
    "memory_limit",
    "inactivity_timeout",
    "tasks_per_message",
    "description",
)
SUPPORTED_ISOLATION = (Isolation.INLINE, Isolation.PROCESS, Isolation.EXECUTOR)


@dataclass(frozen=True)
class TaskTypeSpec:
    """A task type as the code declares it."""

    name: str
    plugin: type[BatchTaskPlugin] = field(compare=False)
    options: dict[str, Any] = field(default_factory=dict)
    #: Who may submit it over the HTTP API: nobody (False), any signed-in user (True),
    #: or users with the named permission ("app_label.codename").
    web: bool | str = False
    #: Where its outcome is POSTed once it reaches a final state (a webhook finalizer).
    webhook: str | None = None
    #: The module of the ``django.tasks`` function it runs ("" for a plugin class): its
    #: definition row records it, so that a worker that does not know the type imports it.
    function_module: str = ""
    #: A schedule declared with the type (``@batchtask(schedule=...)``): the keys of a
    #: ``BATCHTASKS["SCHEDULES"]`` entry but ``type``; the schedule is named after the type.
    schedule: dict[str, Any] | None = field(default=None, compare=False)

    def definition_values(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Field values for a new definition row: code defaults, then ``overrides``."""
        from .conf import get_settings

        doc = (self.plugin.__doc__ or "").strip()
        values: dict[str, Any] = {
            "queue": get_settings().QUEUE_PREFIX + self.name,
            "max_concurrency": None,
            "max_concurrency_per_key": None,
            "rate_limit": "",
            "priority": int(Priority.NORMAL),
            "timeout": None,
            "soft_timeout": None,
            "max_attempts": 1,
            "max_lost_runs": 3,
            "retry_backoff": 2,
            "retry_backoff_max": 600,
            "retention": None,
            "isolation": Isolation.INLINE.value,
            "memory_limit": None,
            "inactivity_timeout": None,
            "tasks_per_message": None,
            "description": doc.splitlines()[0] if doc else "",
            "function_module": self.function_module,
        }
        values.update(self.options)
        if overrides:
            values.update(validate_options(self.name, overrides, source="BATCHTASKS['TYPES']"))
        return values


def _seconds(name: str, option: str, value: Any, *, allow_zero: bool = False) -> int | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        if seconds != int(seconds):
            raise InvalidTaskOption(
                f"{option}={value!r} for task type {name!r} must be whole seconds."
            )
        value = int(seconds)
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InvalidTaskOption(
            f"{option}={value!r} for task type {name!r} must be a number of seconds >= {low} "
            "(an int or a timedelta), or None."
        )
    return value


def positive_int(name: str, option: str, value: Any, *, allow_none: bool) -> int | None:
    """``value`` if it is an int >= 1 (or ``None`` when allowed), else ``InvalidTaskOption``."""
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        hint = ", or None for no limit" if allow_none else ""
        raise InvalidTaskOption(
            f"{option}={value!r} for task type {name!r} must be an integer >= 1{hint}."
        )
    return value


def _per_message(name: str, option: str, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
        raise InvalidTaskOption(
            f"tasks_per_message={value!r} for task type {name!r} must be an integer from 1 "
            "(one task per message) to 1000, or None (sized from the measured run time)."
        )
    return value


def _count(name: str, option: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidTaskOption(
            f"{option}={value!r} for task type {name!r} must be an integer >= 0."
        )
    return value


def _queue(name: str, option: str, value: Any) -> str:
    if not is_name(value):
        raise InvalidTaskOption(f"queue={value!r} for task type {name!r} must be {NAME_RULE}.")
    return str(value)


def _priority(name: str, option: str, value: Any) -> int:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not (PRIORITY_MIN <= value <= PRIORITY_MAX)
    ):
        raise InvalidTaskOption(
            f"priority={value!r} for task type {name!r} must be an integer from "
            f"{PRIORITY_MIN} to {PRIORITY_MAX} (see batchtasks.Priority)."
        )
    return int(value)


def _isolation(name: str, option: str, value: Any) -> str:
    if value not in Isolation.values:
        raise InvalidTaskOption(
            f"isolation={value!r} for task type {name!r} must be one of {Isolation.values}."
        )
    if value not in SUPPORTED_ISOLATION:
        raise InvalidTaskOption(
            f"isolation={value!r} for task type {name!r} is not supported yet; "
            f"use one of {[str(v) for v in SUPPORTED_ISOLATION]}."
        )
    return str(value)


def _rate_limit(name: str, option: str, value: Any) -> str:
    if value is None:
        return ""
    try:
        parse_rate(value)
    except InvalidTaskOption as exc:
        raise InvalidTaskOption(f"For task type {name!r}: {exc}") from None
    return str(value)


def _description(name: str, option: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidTaskOption(f"description for task type {name!r} must be a string.")
    return value


_CHECKS: dict[str, Callable[[str, str, Any], Any]] = {
    "queue": _queue,
    "max_concurrency": partial(positive_int, allow_none=True),
    "max_concurrency_per_key": partial(positive_int, allow_none=True),
    "rate_limit": _rate_limit,
    "priority": _priority,
    "timeout": _seconds,
    "soft_timeout": _seconds,
    "max_attempts": partial(positive_int, allow_none=False),
    "max_lost_runs": _count,
    "retry_backoff": partial(_seconds, allow_zero=True),
    "retry_backoff_max": partial(_seconds, allow_zero=True),
    "retention": partial(_seconds, allow_zero=True),
    "isolation": _isolation,
    "memory_limit": partial(positive_int, allow_none=True),
    "inactivity_timeout": _seconds,
    "tasks_per_message": _per_message,
    "description": _description,
}
assert set(_CHECKS) == set(OPTIONS)


def validate_options(name: str, options: dict[str, Any], *, source: str) -> dict[str, Any]:
    """Check task type options; unknown names and bad values raise ``InvalidTaskOption``."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InvalidTaskOption(
            f"{source} got unknown option(s) {', '.join(map(repr, unknown))} for task type "
            f"{name!r}; the options are {', '.join(OPTIONS)}."
        )
    clean = {option: _CHECKS[option](name, option, value) for option, value in options.items()}
    timeout, soft = clean.get("timeout"), clean.get("soft_timeout")
    if timeout is not None and soft is not None and soft >= timeout:
        raise InvalidTaskOption(
            f"soft_timeout={soft} for task type {name!r} must be less than timeout={timeout}."
        )
    return clean


class Registry:
    """Task types by name."""

    def __init__(self) -> None:
        self._types: dict[str, TaskTypeSpec] = {}
        #: Function types met in definition rows (name to module), not imported yet.
        self._function_modules: dict[str, str] = {}

    def register(self, spec: TaskTypeSpec) -> None:
        """Add a type; re-registering the same class (a module reload) replaces it."""
        existing = self._types.get(spec.name)
        if existing is not None and _qualname(existing.plugin) != _qualname(spec.plugin):
            raise DuplicateTaskType(
                f"Task type {spec.name!r} is registered by both {_qualname(existing.plugin)} and "
                f"{_qualname(spec.plugin)}; give one of them another name."
            )
        self._types[spec.name] = spec

    def unregister(self, name: str) -> None:
        """Remove a type (tests use this)."""
        self._types.pop(name, None)

    def learn_function(self, name: str, module: str) -> None:
        """Note that type ``name`` is a ``django.tasks`` function of ``module``, as its
        definition row records: ``get`` imports that module if the type is not known yet.
        Only definition rows written by the backend say so (never a name from a request)."""
        if name not in self._types:
            self._function_modules[name] = module

    def get(self, name: str) -> TaskTypeSpec:
        """The type called ``name``, or ``UnknownTaskType`` naming close matches."""
        if isinstance(name, str) and name not in self._types and name in self._function_modules:
            self._import_function(name, self._function_modules[name])
        try:
            return self._types[name]
        except (KeyError, TypeError):
            summary = self._unknown_summary(name)
            raise UnknownTaskType(f"{summary} {self._registered()}", summary=summary) from None

    def _unknown_summary(self, name: object) -> str:
        close = difflib.get_close_matches(str(name), self._types, n=3, cutoff=0.6)
        if not close:
            return _("Unknown task type %(type)s.") % {"type": repr(name)}
        return _("Unknown task type %(type)s. Did you mean %(close)s?") % {
            "type": repr(name),
            "close": get_text_list([repr(c) for c in close], _("or")),
        }

    def _registered(self) -> str:
        return _(
            "Registered types: %(types)s. A type is registered by a @batchtask class in a "
            "module listed in BATCHTASKS['PLUGINS']."
        ) % {"types": ", ".join(sorted(self._types)) or _("none")}

    def _import_function(self, name: str, module: str) -> None:
        """Import the module of the function type ``name``, whose ``@task`` registers it."""
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise FunctionModuleNotImported(
                f"Task type {name!r} is a django.tasks function of the module {module!r}, which "
                f"this worker cannot import ({type(exc).__name__}: {exc}). Add {module!r} to "
                "BATCHTASKS['PLUGINS'] in the worker's settings and make it importable there "
                "(install its package, or put its folder on the worker's PYTHONPATH)."
            ) from exc
        if name not in self._types:
            raise FunctionModuleNotImported(
                f"Task type {name!r} is a django.tasks function of the module {module!r}, but "
                "importing it registered no such function. Check that the function still "
                "exists there and that TASKS names batchtasks.backends.BatchTasksBackend in "
                "the worker's settings."
            )
        self._function_modules.pop(name, None)

    def __iter__(self) -> Iterator[TaskTypeSpec]:
        return iter(sorted(self._types.values(), key=lambda spec: spec.name))

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def load(self, modules: tuple[str, ...]) -> None:
        """Import the plugin modules so that their classes register."""
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ConfigurationError(
                    f"BATCHTASKS['PLUGINS'] lists {module!r}, which cannot be imported: {exc}"
                ) from exc


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


registry = Registry()


def _web(name: str, value: Any) -> bool | str:
    if isinstance(value, bool) or (isinstance(value, str) and re.fullmatch(r"[\w]+\.[\w]+", value)):
        return value
    raise InvalidTaskOption(
        f"web={value!r} for task type {name!r} must be True (any signed-in user may submit "
        "it over HTTP), False (none may), or a permission such as 'reports.add_report'."
    )


def _webhook(name: str, value: Any) -> str | None:
    if value is None or (isinstance(value, str) and re.match(r"https?://[^\s]+$", value)):
        return value
    raise InvalidTaskOption(
        f"webhook={value!r} for task type {name!r} must be an http:// or https:// URL, or None."
    )


def batchtask(
    name: str,
    *,
    web: bool | str = False,
    webhook: str | None = None,
    schedule: dict[str, Any] | None = None,
    **options: Any,
) -> Callable[[P], P]:
    """Register a ``BatchTaskPlugin`` subclass as the task type ``name``.

    ``web`` says who may submit it over the HTTP API (see ``TaskTypeSpec.web``);
    ``schedule`` submits it on a schedule of its own (``TaskTypeSpec.schedule``); the
    other options are the fields of its definition (``OPTIONS``).
    """
    if not is_name(name):
        raise InvalidTaskOption(
            f"Task type name {name!r} must be {NAME_RULE}, for example 'reports.users_csv'."
        )
    clean = validate_options(name, options, source="@batchtask")
    web = _web(name, web)
    webhook = _webhook(name, webhook)
    if schedule is not None:
        _check_schedule(name, schedule)

    def decorate(cls: P) -> P:
        from .plugin import BatchTaskPlugin

        if not (isinstance(cls, type) and issubclass(cls, BatchTaskPlugin)):
            raise InvalidTaskOption(
                f"@batchtask({name!r}) decorates {cls!r}; it must decorate a subclass of "
                "batchtasks.BatchTaskPlugin that overrides run(self, params)."
            )
        if cls.run is BatchTaskPlugin.run:
            raise InvalidTaskOption(f"{_qualname(cls)} must override run(self, params).")
        _check_executor(name, cls, clean.get("isolation"))
        if cls.Params is not None:
            check_params_class(cls.Params, name)
        cls.type_name = name
        registry.register(
            TaskTypeSpec(
                name=name,
                plugin=cls,
                options=clean,
                web=web,
                webhook=webhook,
                schedule=schedule,
            )
        )
        return cls

    return decorate


def _check_schedule(name: str, schedule: Any) -> None:
    if not isinstance(schedule, dict) or "type" in schedule:
        raise InvalidTaskOption(
            f"@batchtask({name!r}, schedule=...) takes a dict of a schedule's keys but "
            "'type' (the schedule submits this type), e.g. {'cron': '0 3 * * *'}."
        )
    check_declared(name, {"type": name, **schedule}, where=f"@batchtask({name!r}, schedule=...)")


def _check_executor(name: str, cls: type, isolation: str | None) -> None:
    """An executor type is an ``ExecutorPlugin`` with a command, and only it is one."""
    from .plugin import ExecutorPlugin

    is_executor = issubclass(cls, ExecutorPlugin)
    if is_executor != (isolation == Isolation.EXECUTOR):
        raise InvalidTaskOption(
            f"@batchtask({name!r}) on {_qualname(cls)}: isolation='executor' needs a subclass "
            "of batchtasks.ExecutorPlugin, and an ExecutorPlugin needs isolation='executor'."
        )
    if not is_executor:
        return
    command = getattr(cls, "command", None)
    if not (isinstance(command, list) and command and all(isinstance(a, str) for a in command)):
        raise InvalidTaskOption(
            f"{_qualname(cls)}.command={command!r} must be a non-empty list of strings "
            "(the program and its arguments; it is never run through a shell)."
        )
    environment = getattr(cls, "environment", None)
    if not (
        isinstance(environment, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in environment.items())
    ):
        raise InvalidTaskOption(
            f"{_qualname(cls)}.environment={environment!r} must map environment variable "
            "names to names of Django settings (both strings)."
        )
