"""What a worker process knows of a task type, read again every few seconds."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields

from ..core.registry import registry
from ..models import BatchQueue, BatchTaskDefinition

FACTS_TTL = 5.0


@dataclass(frozen=True)
class TypeFacts:
    """The definition values the runner needs, as the rows said a moment ago."""

    name: str
    #: Whether the type (in all or per key) or its queue has a limit (a finish then
    #: refills at once).
    limited: bool
    retry_backoff: int
    retry_backoff_max: int
    retention: int | None
    #: Where the plugin runs: inline, process or executor (``core.states.Isolation``).
    isolation: str = "inline"
    #: Bytes of address space a process-isolated run may use (``None``: no limit).
    memory_limit: int | None = None
    #: Seconds a run may go without progress (an executor: without output).
    inactivity_timeout: int | None = None
    #: The module of the ``django.tasks`` function the type runs ("" for a plugin class).
    function_module: str = ""
    #: The type's hard and soft time limits in seconds (``None``: none).
    timeout: int | None = None
    soft_timeout: int | None = None


#: The facts read as they are from the definition's columns of the same names.
_COPIED = tuple(field.name for field in fields(TypeFacts) if field.name != "limited")

_facts: dict[tuple[int, str], tuple[float, TypeFacts]] = {}


def type_facts(definition_id: int, queue: str, using: str) -> TypeFacts:
    """The facts of a type and its queue (cached ``FACTS_TTL`` seconds per process)."""
    key = (definition_id, queue)
    now = time.monotonic()
    cached = _facts.get(key)
    if cached is not None and now - cached[0] < FACTS_TTL:
        return cached[1]
    row = (
        BatchTaskDefinition.objects.using(using)
        .values(*_COPIED, "max_concurrency", "max_concurrency_per_key")
        .get(pk=definition_id)
    )
    if row["function_module"]:  # a function type: this process imports it when first run
        registry.learn_function(row["name"], row["function_module"])
    queue_limit = (
        BatchQueue.objects.using(using)
        .filter(name=queue)
        .values_list("max_concurrency", flat=True)
        .first()
    )
    # A finish frees a slot of its key, too: refilled at once.
    limited = (
        row["max_concurrency"] is not None
        or row["max_concurrency_per_key"] is not None
        or queue_limit is not None
    )
    facts = TypeFacts(limited=limited, **{column: row[column] for column in _COPIED})
    _facts[key] = (now, facts)
    return facts
