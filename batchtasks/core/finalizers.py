"""Finalizers: functions code registers for task types, called once a task of the type
is final (succeeded, failed after its last attempt, cancelled or skipped).

``services.finalize`` runs them, with the type's webhook, after the task's final state
is recorded; a finalizer that raises is retried with backoff and never changes the
task's outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .exceptions import InvalidTaskOption
from .names import is_name
from .registry import registry

#: A finalizer takes the final ``BatchTask``; what it returns is ignored.
Finalizer = Callable[[Any], object]
F = TypeVar("F", bound=Finalizer)

_finalizers: dict[str, list[Finalizer]] = {}


def finalizer(*type_names: str) -> Callable[[F], F]:
    """Register the decorated function as a finalizer of the task types ``type_names``."""
    if not type_names:
        raise InvalidTaskOption("@finalizer needs at least one task type name.")
    for name in type_names:
        if not is_name(name):
            raise InvalidTaskOption(f"@finalizer got {name!r}, which is not a task type name.")

    def decorate(function: F) -> F:
        if not callable(function):
            raise InvalidTaskOption(f"@finalizer must decorate a function, not {function!r}.")
        for name in type_names:
            known = _finalizers.setdefault(name, [])
            if function not in known:  # a module imported twice registers once
                known.append(function)
        return function

    return decorate


def finalizers_of(type_name: str) -> list[Finalizer]:
    """The finalizers registered for ``type_name``, in registration order."""
    return list(_finalizers.get(type_name, ()))


def unregister_finalizer(type_name: str, function: Finalizer) -> None:
    """Forget one finalizer of a type (tests, code reloading)."""
    known = _finalizers.get(type_name, [])
    if function in known:
        known.remove(function)


def webhook_of(type_name: str) -> str | None:
    """The URL the type's outcomes are POSTed to, if it declares one."""
    return registry.get(type_name).webhook if type_name in registry else None


def has_finalizers(type_name: str) -> bool:
    """Whether a final task of ``type_name`` has anything to run (finalizers or webhook)."""
    return bool(_finalizers.get(type_name)) or webhook_of(type_name) is not None


def finalized_types() -> tuple[str, ...]:
    """The names of the types with something to run once final, sorted."""
    names = {name for name, functions in _finalizers.items() if functions}
    names.update(spec.name for spec in registry if spec.webhook is not None)
    return tuple(sorted(names))
