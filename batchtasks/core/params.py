"""Checking parameters against what a task type declares, before anything is written.

A plugin declares its parameters with a dataclass as ``Params``: unknown names, missing
required ones and values of the wrong JSON type are refused, naming each field. The
check covers what JSON can carry (``str``, ``int``, ``float``, ``bool``, ``None``,
``list``, ``dict``, their unions and ``Literal``); other annotations are not checked.
A plugin may also override ``validate_params`` for anything more.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from .exceptions import ConfigurationError, InvalidParameters


def check_declared(params_class: type, params: Any, *, type_name: str) -> None:
    """Raise ``InvalidParameters`` naming every field of ``params`` that does not fit."""
    if not isinstance(params, dict):
        raise InvalidParameters(
            f"Task type {type_name!r} takes its parameters as a JSON object (a dict), "
            f"not {type(params).__name__}.",
            fields={"": f"expected an object, got {type(params).__name__}"},
        )
    fields = {f.name: f for f in dataclasses.fields(params_class) if f.init}
    hints = _hints(params_class)
    errors: dict[str, str] = {}
    for name in params:
        if name not in fields:
            errors[str(name)] = "unknown parameter"
    for name, field in fields.items():
        if name not in params:
            required = (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            )
            if required:
                errors[name] = "required"
        elif (problem := _mismatch(params[name], hints.get(name, Any))) is not None:
            errors[name] = problem
    if errors:
        listed = "; ".join(f"{name}: {why}" for name, why in sorted(errors.items()))
        raise InvalidParameters(
            f"Invalid parameters for task type {type_name!r}: {listed}.", fields=errors
        )


def check_params_class(params_class: Any, type_name: str) -> None:
    """A configuration error unless ``params_class`` is a dataclass."""
    if not (isinstance(params_class, type) and dataclasses.is_dataclass(params_class)):
        raise ConfigurationError(
            f"Task type {type_name!r}: Params must be a dataclass declaring the parameters, "
            f"not {params_class!r}; decorate it with @dataclasses.dataclass."
        )


def _hints(params_class: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(params_class)
    except Exception:  # an annotation that cannot be resolved is not checked
        return {}


_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
_NAMES.update({list: "a list", dict: "an object", type(None): "null"})


def _mismatch(value: Any, annotation: Any) -> str | None:
    """Why ``value`` does not fit ``annotation`` (``None`` if it does or cannot be told)."""
    options = _options(annotation)
    if options is None:
        return None
    for option in options:
        if _fits(value, option):
            return None
    wanted = " or ".join(_describe(option) for option in options)
    return f"expected {wanted}, got {value!r:.60}"


def _options(annotation: Any) -> list[Any] | None:
    """The alternatives ``annotation`` allows; ``None`` if it is not checked."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        options: list[Any] = []
        for arg in typing.get_args(annotation):
            inner = _options(arg)
            if inner is None:
                return None
            options.extend(inner)
        return options
    if origin is typing.Literal:
        return [("literal", value) for value in typing.get_args(annotation)]
    if annotation is None:
        annotation = type(None)
    kind = origin or annotation
    return [kind] if kind in _NAMES else None


def _fits(value: Any, option: Any) -> bool:
    if isinstance(option, tuple):  # a Literal value
        return type(value) is type(option[1]) and value == option[1]
    if option is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if option is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, option)


def _describe(option: Any) -> str:
    if isinstance(option, tuple):
        return repr(option[1])
    return _NAMES[option]
