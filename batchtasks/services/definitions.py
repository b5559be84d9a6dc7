"""Definition and queue rows, created lazily from the registry and the settings."""

from __future__ import annotations

import logging

from django.db import router

from ..core.conf import get_settings
from ..core.registry import TaskTypeSpec, positive_int, registry
from ..models import BatchQueue, BatchTaskDefinition

logger = logging.getLogger(__name__)


def _db(using: str | None) -> str:
    return using or router.db_for_write(BatchTaskDefinition)


def get_definition(name: str, *, using: str | None = None) -> BatchTaskDefinition:
    """The live definition of a registered type, created from code and settings if missing."""
    spec = registry.get(name)
    db = _db(using)
    try:
        return _record_function(BatchTaskDefinition.objects.using(db).get(name=name), spec, db)
    except BatchTaskDefinition.DoesNotExist:
        pass
    overrides = get_settings().TYPES.get(name)
    definition, created = BatchTaskDefinition.objects.using(db).get_or_create(
        name=name, defaults=spec.definition_values(overrides)
    )
    if created:
        logger.info("batchtasks definition created type=%s queue=%s", name, definition.queue)
    ensure_queue(definition.queue, using=db)
    return definition


def _record_function(
    definition: BatchTaskDefinition, spec: TaskTypeSpec, db: str
) -> BatchTaskDefinition:
    """Record a function type's module on a row written before rows recorded it (their
    sync on migrate or a worker's start does), so that workers can import it."""
    if spec.function_module and not definition.function_module:
        BatchTaskDefinition.objects.using(db).filter(pk=definition.pk, function_module="").update(
            function_module=spec.function_module
        )
        definition.function_module = spec.function_module
    return definition


def ensure_queue(name: str, *, using: str | None = None) -> BatchQueue:
    """The queue row called ``name``, created with the settings' limit if missing."""
    db = _db(using)
    options = get_settings().QUEUES.get(name, {})
    limit = positive_int(name, "max_concurrency", options.get("max_concurrency"), allow_none=True)
    queue, _ = BatchQueue.objects.using(db).get_or_create(
        name=name, defaults={"max_concurrency": limit}
    )
    return queue


def sync_definitions(*, using: str | None = None) -> list[BatchTaskDefinition]:
    """Create the missing definition and queue rows of every registered type."""
    definitions = [get_definition(spec.name, using=using) for spec in registry]
    for definition in definitions:
        ensure_queue(definition.queue, using=using)
    return definitions
