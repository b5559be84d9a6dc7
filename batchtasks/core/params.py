"""Checking parameters against what a task type declares, before anything is written.

A plugin declares its parameters with a dataclass as ``Params``: unknown names, missing
required ones and values of the wrong JSON type are refused, naming each field. The
check covers what JSON can carry (``str``, ``int``, ``float``, ``bool``, ``None``,
``list``, ``dict``, their unions and ``Literal``); other annotations are not checked.
A number is never infinite or NaN. A field made with ``param()`` may also have bounds,
and may be one that only code sets (the HTTP API refuses it). A plugin may also
override ``validate_params`` for anything more.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from django.utils.translation import gettext as _

from .exceptions import ConfigurationError, InvalidParameters

#: The key of ``param()``'s rule in a dataclass field's metadata.
METADATA_KEY = "batchtasks"


@dataclasses.dataclass(frozen=True)
class ParamRule:
    """What ``param()`` adds to a field: bounds, and whether the HTTP API may set it."""

    minimum: int | float | None = None
    maximum: int | float | None = None
    max_length: int | None = None
    web: bool = True

    def __post_init__(self) -> None:
        for name in ("minimum", "maximum"):
            value = getattr(self, name)
            if value is not None and not _finite_number(value):
                raise ConfigurationError(f"param({name}={value!r}) must be a finite number.")
        if self.max_length is not None and (
            not isinstance(self.max_length, int) or isinstance(self.max_length, bool)
        ):
            raise ConfigurationError(f"param(max_length={self.max_length!r}) must be an int.")


def param(
    default: Any = dataclasses.MISSING,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    max_length: int | None = None,
    web: bool = True,
) -> Any:
    """A field of ``Params`` with bounds: a number from ``minimum`` to ``maximum``, a
    string, list or object of at most ``max_length`` items; ``web=False``: only code may
    set it (``BatchTask.submit``, the command line), never the HTTP API."""
    rule = ParamRule(minimum, maximum, max_length, web)
    return dataclasses.field(default=default, metadata={METADATA_KEY: rule})


def code_only(params_class: type | None, params: Any) -> dict[str, str]:
    """The fields of ``params`` that only code may set (``param(web=False)``), with why."""
    if params_class is None or not isinstance(params, dict):
        return {}
    return {
        field.name: _("only code may set this parameter, not a request over HTTP")
        for field in dataclasses.fields(params_class)
        if field.name in params and not _rule(field).web
    }


def _rule(field: dataclasses.Field[Any]) -> ParamRule:
    rule = field.metadata.get(METADATA_KEY)
    return rule if isinstance(rule, ParamRule) else ParamRule()


def check_declared(params_class: type, params: Any, *, type_name: str) -> None:
    """Raise ``InvalidParameters`` naming every field of ``params`` that does not fit."""
    if not isinstance(params, dict):
        raise InvalidParameters(
            _("Task type %(type)s takes its parameters as a JSON object (a dict), not %(got)s.")
            % {"type": repr(type_name), "got": type(params).__name__},
            fields={"": _("expected an object, got %(got)s") % {"got": type(params).__name__}},
        )
    fields = {f.name: f for f in dataclasses.fields(params_class) if f.init}
    hints = _hints(params_class)
    errors: dict[str, str] = {}
    for name in params:
        if name not in fields:
            errors[str(name)] = _("unknown parameter")
    for name, field in fields.items():
        if name not in params:
            required = (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            )
            if required:
                errors[name] = _("required")
        elif (problem := _problem(params[name], hints.get(name, Any), field)) is not None:
            errors[name] = problem
    if errors:
        listed = "; ".join(f"{name}: {why}" for name, why in sorted(errors.items()))
        raise InvalidParameters(
            _("Invalid parameters for task type %(type)s: %(errors)s.")
            % {"type": repr(type_name), "errors": listed},
            fields=errors,
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


def _problem(value: Any, annotation: Any, field: dataclasses.Field[Any]) -> str | None:
    """Why ``value`` does not fit the field: its type first, then its bounds."""
    return _mismatch(value, annotation) or _out_of_bounds(value, _rule(field))


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _out_of_bounds(value: Any, rule: ParamRule) -> str | None:
    """Why ``value`` (of the declared type) is outside ``rule``'s bounds, if it is."""
    low, high = rule.minimum, rule.maximum
    if _finite_number(value):
        if low is not None and high is not None and not low <= value <= high:
            bounds = {"low": low, "high": high, "value": repr(value)}
            return _("must be from %(low)s to %(high)s, got %(value)s") % bounds
        if low is not None and value < low:
            return _("must be at least %(low)s, got %(value)s") % {"low": low, "value": repr(value)}
        if high is not None and value > high:
            return _("must be at most %(high)s, got %(value)s") % {
                "high": high,
                "value": repr(value),
            }
    limit = rule.max_length
    if limit is not None and isinstance(value, str | list | dict) and len(value) > limit:
        if isinstance(value, str):
            text = _("must be at most %(limit)s characters long, got %(length)s")
        else:
            text = _("must be at most %(limit)s items long, got %(length)s")
        return text % {"limit": limit, "length": len(value)}
    return None


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
    if option is float:  # JSON has no infinity or NaN (Python reads 1e999 as inf)
        return _finite_number(value)
    if option is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, option)


def _describe(option: Any) -> str:
    if isinstance(option, tuple):
        return repr(option[1])
    return _NAMES[option]
