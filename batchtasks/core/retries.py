"""When a failed attempt runs again: exponential backoff with jitter, per type."""

from __future__ import annotations

import random

from .exceptions import PermanentFailure


def retry_delay(attempt: int, backoff: int, backoff_max: int) -> float:
    """Seconds to wait before attempt ``attempt + 1``: ``backoff`` doubled for each attempt
    after the first, at most ``backoff_max``, of which a random half ("equal jitter") so
    that tasks that failed together do not all come back together."""
    ceiling = min(backoff_max, backoff * 2 ** max(attempt - 1, 0))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def is_retryable(exc: BaseException, retry_on: tuple[type[BaseException], ...]) -> bool:
    """Whether an attempt that raised ``exc`` may run again (attempts allowing)."""
    return not isinstance(exc, PermanentFailure) and isinstance(exc, retry_on)
