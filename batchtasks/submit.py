"""``submit`` and ``submit_many``: check everything, then insert in the caller's transaction."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone

from .codecs import Encoded, encode
from .conf import get_settings
from .definitions import get_definition
from .dispatch import dispatch_on_commit
from .exceptions import InvalidTaskOption, TaskTypeDisabled
from .models import BatchTask, BatchTaskDefinition, BatchTaskParameters
from .registry import registry
from .states import PRIORITY_MAX, PRIORITY_MIN, UNFINISHED_STATES, TaskState

BULK_BATCH_SIZE = 1000


def check_priority(priority: Any) -> int:
    """The priority as an int, or ``InvalidTaskOption`` if it is not one from -100 to 100."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidTaskOption(
            f"priority={priority!r} must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX} "
            "(see batchtasks.Priority)."
        )
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidTaskOption(
            f"priority={priority!r} is out of range; use {PRIORITY_MIN} to {PRIORITY_MAX} "
            "(Priority.UNIMPORTANT=-50, NORMAL=0, IMPORTANT=50, IMMEDIATE=100)."
        )
    return int(priority)


def _check_text(name: str, value: Any, limit: int, *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidTaskOption(f"{name}={value!r} must be a string.")
    if len(value) > limit:
        raise InvalidTaskOption(f"{name} is {len(value)} characters; the limit is {limit}.")
    return value


def _check_run_after(run_after: Any) -> datetime | None:
    if run_after is None:
        return None
    if isinstance(run_after, timedelta):
        return timezone.now() + run_after
    if isinstance(run_after, datetime):
        if settings.USE_TZ and timezone.is_naive(run_after):
            raise InvalidTaskOption(
                f"run_after={run_after!r} is a naive datetime; pass an aware one "
                "(django.utils.timezone.now() + timedelta(...)) or a timedelta."
            )
        return run_after
    raise InvalidTaskOption(f"run_after={run_after!r} must be a datetime, a timedelta or None.")


def _owner_id(owner: Any) -> int | None:
    if owner is None or getattr(owner, "is_anonymous", False):
        return None
    pk = getattr(owner, "pk", None)
    if pk is None:
        raise InvalidTaskOption(
            f"owner={owner!r} must be a saved user (an instance of the user model) or None."
        )
    return int(pk)


@dataclass(frozen=True)
class Request:
    """Everything checked about a submit, ready to insert."""

    definition: BatchTaskDefinition
    owner_id: int | None
    priority: int
    description: str
    run_after: datetime | None
    fairness_key: str
    db: str

    def new_task(self, fair_round: int, unique_key: str | None = None) -> BatchTask:
        return BatchTask(
            definition=self.definition,
            owner_id=self.owner_id,
            priority=self.priority,
            description=self.description,
            run_after=self.run_after,
            fairness_key=self.fairness_key,
            fair_round=fair_round,
            unique_key=unique_key,
        )


def _prepare(
    type_name: str,
    *,
    owner: Any,
    priority: Any,
    description: Any,
    run_after: Any,
    fairness_key: Any,
    using: str | None,
) -> Request:
    registry.get(type_name)
    checked_priority = None if priority is None else check_priority(priority)
    text = _check_text("description", description, 500, optional=False) or ""
    key = _check_text("fairness_key", fairness_key, 200, optional=True)
    owner_id = _owner_id(owner)
    when = _check_run_after(run_after)
    db = using or router.db_for_write(BatchTask)
    definition = get_definition(type_name, using=db)
    if not definition.enabled:
        raise TaskTypeDisabled(
            f"Task type {type_name!r} is disabled; enable its definition in the admin "
            "(Batch task definitions) before submitting."
        )
    if key is None:
        key = "" if owner_id is None else f"user:{owner_id}"
    return Request(
        definition=definition,
        owner_id=owner_id,
        priority=definition.priority if checked_priority is None else checked_priority,
        description=text,
        run_after=when,
        fairness_key=key,
        db=db,
    )


def _first_round(request: Request) -> int:
    """Start-time fair queueing. A task's turn is after its key's own waiting tasks and
    never before the turn being served now (the newest in flight, else the head of the
    line), so a newcomer waits at most one round whatever the backlog of others."""
    table = connections[request.db].ops.quote_name(BatchTask._meta.db_table)
    definition = request.definition
    sql = (
        f"SELECT (SELECT MAX(fair_round) FROM {table} WHERE queue = %s AND definition_id = %s "
        "AND state IN (%s, %s)), "
        f"(SELECT MIN(fair_round) FROM {table} WHERE definition_id = %s AND state = %s), "
        f"(SELECT MAX(fair_round) FROM {table} WHERE definition_id = %s AND state = %s "
        "AND fairness_key = %s)"
    )
    params: list[Any] = [
        definition.queue,
        definition.pk,
        TaskState.QUEUED,
        TaskState.RUNNING,
        definition.pk,
        TaskState.NEW,
        definition.pk,
        TaskState.NEW,
        request.fairness_key,
    ]
    with connections[request.db].cursor() as cursor:
        cursor.execute(sql, params)
        serving, head, last = cursor.fetchone()
    now = serving if serving is not None else (head or 0)
    return now if last is None else max(now, last + 1)


def _parameters(task: BatchTask, encoded: Encoded) -> BatchTaskParameters:
    return BatchTaskParameters(task=task, data=encoded.data, codec=encoded.codec, size=encoded.size)


def submit(
    type_name: str,
    params: Any = None,
    *,
    owner: Any = None,
    priority: Any = None,
    description: Any = "",
    run_after: Any = None,
    unique_key: Any = None,
    fairness_key: Any = None,
    using: str | None = None,
) -> BatchTask:
    """Insert one task and its parameters; publish after the caller's transaction commits."""
    unique = _check_text("unique_key", unique_key, 200, optional=True)
    encoded = encode(
        {} if params is None else params,
        type_name=type_name,
        limit=get_settings().MAX_PARAMS_BYTES,
    )
    request = _prepare(
        type_name,
        owner=owner,
        priority=priority,
        description=description,
        run_after=run_after,
        fairness_key=fairness_key,
        using=using,
    )
    with transaction.atomic(using=request.db):
        task = request.new_task(_first_round(request), unique)
        if unique is None:
            task.save(using=request.db)
        else:
            existing = _insert_unique(task, request)
            if existing is not None:
                return existing
        _parameters(task, encoded).save(using=request.db, force_insert=True)
    dispatch_on_commit(request.definition.queue, using=request.db)
    return task


def _insert_unique(task: BatchTask, request: Request) -> BatchTask | None:
    """Insert ``task`` unless an unfinished task has its key; then return that one."""
    try:
        with transaction.atomic(using=request.db):
            task.save(using=request.db)
    except IntegrityError:
        existing = (
            BatchTask.objects.using(request.db)
            .filter(
                definition=request.definition,
                unique_key=task.unique_key,
                state__in=UNFINISHED_STATES,
            )
            .first()
        )
        if existing is None:  # finished in between: try once more
            task.pk = None
            task.save(using=request.db)
            return None
        # Sense/Net: an identical task is not inserted twice, only its priority is raised.
        if task.priority > existing.priority:
            existing.set_priority(task.priority)
        return existing
    return None


def submit_many(
    type_name: str,
    params_list: Iterable[Any],
    *,
    owner: Any = None,
    priority: Any = None,
    description: Any = "",
    run_after: Any = None,
    fairness_key: Any = None,
    using: str | None = None,
) -> list[BatchTask]:
    """Insert one task per parameter set in bulk; publish after the transaction commits."""
    if isinstance(params_list, dict | str | bytes):
        raise InvalidTaskOption(
            "submit_many takes a list of parameter sets, not a single "
            f"{type(params_list).__name__}; use submit() for one task."
        )
    limit = get_settings().MAX_PARAMS_BYTES
    encoded = [
        encode({} if p is None else p, type_name=type_name, limit=limit) for p in params_list
    ]
    request = _prepare(
        type_name,
        owner=owner,
        priority=priority,
        description=description,
        run_after=run_after,
        fairness_key=fairness_key,
        using=using,
    )
    if not encoded:
        return []
    with transaction.atomic(using=request.db):
        first = _first_round(request)
        tasks = [request.new_task(first + i) for i in range(len(encoded))]
        manager = BatchTask.objects.using(request.db)
        tasks = manager.bulk_create(tasks, batch_size=BULK_BATCH_SIZE)
        BatchTaskParameters.objects.using(request.db).bulk_create(
            [_parameters(task, enc) for task, enc in zip(tasks, encoded, strict=True)],
            batch_size=BULK_BATCH_SIZE,
        )
    dispatch_on_commit(request.definition.queue, using=request.db)
    return tasks
