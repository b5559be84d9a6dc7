"""How a plugin's end is described, wherever it ran (the pool process or a child): the
check of its result and the name of its error."""

from __future__ import annotations

import json

from ...core.conf import get_settings
from ...core.exceptions import ResultNotSerializable, ResultTooLarge

MAX_MESSAGE = 10_000
MAX_TRACEBACK = 64_000


def error_type(exc: BaseException) -> str:
    """``module.Class`` of an exception (just ``Class`` for builtins)."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def check_result(type_name: str, result: object) -> None:
    """Raise if ``result`` cannot be stored: not JSON, or larger than the limit."""
    if result is None:  # most plugins return nothing
        return
    try:
        text = json.dumps(result, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ResultNotSerializable(
            f"Task type {type_name!r} returned {type(result).__name__}, which cannot be stored "
            f"as JSON ({exc}); return dicts, lists, strings, numbers, booleans or None."
        ) from exc
    limit = get_settings().MAX_RESULT_BYTES
    size = len(text.encode())
    if size > limit:
        raise ResultTooLarge(
            f"Task type {type_name!r} returned a result of {size:,} bytes as JSON; the limit "
            f"is {limit:,} (BATCHTASKS['MAX_RESULT_BYTES']). Store large output elsewhere "
            "(a file or a model) and return a reference to it."
        )
