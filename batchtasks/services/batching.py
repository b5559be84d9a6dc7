"""How many tasks of a backlog share one run message.

A message costs Celery about a millisecond of its worker's parent process whatever it
carries, and each claim and finish a database round trip: a backlog of tiny tasks is
cheaper when one message carries several, claimed in one statement, run one after
another in one pool process and finished in batches. Only for types that run inline
(their time limits are enforced per task by the worker's agent, ``worker.timelimits``;
Celery enforces them per message for the others), and never so many that the
pool processes consuming the queue would sit idle: the tasks admitted are spread over
them first. The size aims at ``MESSAGE_BATCH_SECONDS`` of the type's measured run time
(``run_seconds``), at most ``MESSAGE_BATCH_MAX`` and the type's ``tasks_per_message``;
a type not measured yet gets one task per message.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..core.conf import get_settings
from ..core.states import Isolation
from ..models import BatchWorker
from ..models.workers import WorkerState

CONSUMERS_TTL = 5.0
_consumers: dict[tuple[str, str], tuple[float, int]] = {}


def consumers(queue: str, *, using: str) -> int:
    """Pool processes of the online workers consuming ``queue`` (cached a few seconds)."""
    key, now = (using, queue), time.monotonic()
    cached = _consumers.get(key)
    if cached is not None and now - cached[0] < CONSUMERS_TTL:
        return cached[1]
    rows = BatchWorker.objects.using(using).filter(state=WorkerState.ONLINE)
    total = sum(c for queues, c in rows.values_list("queues", "concurrency") if queue in queues)
    _consumers[key] = (now, total)
    return total


def per_message(definition: Any, admitted: int, queue: str, *, using: str) -> int:
    """How many of ``admitted`` tasks of ``definition``'s type (a definition row or the
    dispatcher's view of one) may share a message in ``queue``."""
    conf = get_settings()
    if (
        admitted < 2
        or conf.MESSAGE_BATCH_SECONDS <= 0
        or definition.tasks_per_message == 1
        or definition.isolation != Isolation.INLINE
        or not definition.run_seconds
    ):
        return 1
    size = min(conf.MESSAGE_BATCH_MAX, int(conf.MESSAGE_BATCH_SECONDS / definition.run_seconds))
    if definition.tasks_per_message is not None:
        size = min(size, definition.tasks_per_message)
    spread = math.ceil(admitted / max(1, consumers(queue, using=using)))
    return max(1, min(size, spread))
