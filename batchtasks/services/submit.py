"""``submit`` and ``submit_many``: check everything, then insert in the caller's transaction."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.db.models.base import ModelState

from .. import transitions
from ..core.codecs import Encoded, encode
from ..core.conf import get_settings
from ..core.exceptions import InvalidParameters, InvalidTaskOption, TaskTypeDisabled
from ..core.registry import registry
from ..core.states import IN_FLIGHT_STATES, UNFINISHED_STATES, TaskState
from ..db.sql import Clock, as_datetime, states_sql
from ..models import BatchQueue, BatchTask, BatchTaskDefinition, BatchTaskParameters, TaskGroup
from . import events
from .batching import per_message
from .bulk import insert_task, insert_tasks
from .definitions import get_definition
from .dispatch import dispatch_on_commit, publish_on_commit, run_of
from .validation import check_owner, check_priority, check_run_after, check_text


@dataclass(frozen=True)
class Request:
    """Everything checked about a submit, ready to insert."""

    definition: BatchTaskDefinition
    owner_id: int | None
    priority: int
    description: str
    run_after: datetime | None
    fairness_key: str
    first_round: int
    line: Line
    db: str
    #: The database's clock when the submit read the line: every time written comes from it.
    now: datetime

    def new_task(
        self, fair_round: int, unique_key: str | None = None, *, queued: bool = False
    ) -> BatchTask:
        task = BatchTask(
            definition=self.definition,
            owner_id=self.owner_id,
            priority=self.priority,
            description=self.description,
            run_after=self.run_after,
            fairness_key=self.fairness_key,
            fair_round=fair_round,
            unique_key=unique_key,
            created_at=self.now,
            updated_at=self.now,
        )
        if queued:
            task.state, task.queue = TaskState.QUEUED, self.definition.queue
            task.queued_at = self.now
        return task

    def admit_at_once(self, count: int) -> bool:
        """Whether ``count`` new tasks may skip the dispatcher and be published after commit.

        Only for a type and queue without limits, when nothing of the type waits (so no
        one is overtaken) and the queue's window has room: a soft bound, which concurrent
        submits may overshoot by a few tasks. Limited types always go through the
        dispatcher's lock.
        """
        line = self.line
        return (
            self.definition.max_concurrency is None
            and line.queue_limit is None
            and not line.backlog
            and line.in_flight + count <= get_settings().DISPATCH_WINDOW
            and (self.run_after is None or self.run_after <= self.now)
        )


@dataclass(frozen=True)
class Line:
    """The state of a type's line when a task joins it."""

    queue_limit: int | None
    in_flight: int
    backlog: bool


def _delay_from(now: datetime, delay: timedelta) -> datetime:
    """``now + delay``, or ``InvalidTaskOption`` if that is no date a calendar holds."""
    try:
        return now + delay
    except OverflowError:
        raise InvalidTaskOption(
            f"run_after={delay!r} from now falls outside the years 1 to 9999; pass a shorter delay."
        ) from None


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
    text = check_text("description", description, 500, optional=False) or ""
    key = check_text("fairness_key", fairness_key, 200, optional=True)
    owner_id = check_owner(owner)
    when = check_run_after(run_after)
    db = using or router.db_for_write(BatchTask)
    if key is None:
        key = "" if owner_id is None else f"user:{owner_id}"
    loaded = _load(type_name, key, db)
    if loaded is None:  # first use of the type: create its definition from the code
        get_definition(type_name, using=db)
        loaded = _load(type_name, key, db)
        assert loaded is not None
    definition, first_round, line, db_now = loaded
    if isinstance(when, timedelta):  # from the database's clock, as every time written
        when = _delay_from(db_now, when)
    if not definition.enabled:
        raise TaskTypeDisabled(
            f"Task type {type_name!r} is disabled; enable its definition in the admin "
            "(Batch task definitions) before submitting."
        )
    return Request(
        definition=definition,
        owner_id=owner_id,
        priority=definition.priority if checked_priority is None else checked_priority,
        description=text,
        run_after=when,
        fairness_key=key,
        first_round=first_round,
        line=line,
        db=db,
        now=db_now,
    )


ON_CONFLICT = ("return", "supersede")

# In the model's field order, as Model.from_db expects.
DEFINITION_FIELDS = [
    f.attname
    for f in BatchTaskDefinition._meta.concrete_fields
    if f.attname
    in {"id", "name", "queue", "priority", "enabled", "max_concurrency", "timeout", "soft_timeout"}
]


def _load(
    type_name: str, key: str, db: str
) -> tuple[BatchTaskDefinition, int, Line, datetime] | None:
    """The live definition, the fair turn of the next task of ``key``, the state of the
    line and the database's clock, in one query.

    Start-time fair queueing, one line of turns per queue (its types share it): a task's
    turn comes after its key's own waiting tasks and never before the turn being served
    now (the newest in flight, else the head of the line), so a newcomer waits at most
    one round whatever the backlog of others.
    """
    connection = connections[db]
    sql = _LINE_SQL.get(connection.vendor) or _LINE_SQL.setdefault(
        connection.vendor, _line_sql(connection)
    )
    params: list[Any] = [key, get_settings().DISPATCH_WINDOW + 1, type_name]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    n = len(DEFINITION_FIELDS)
    definition = BatchTaskDefinition.from_db(db, DEFINITION_FIELDS, row[:n])
    serving, head, last, queue_limit, in_flight_count, db_now = row[n:]
    turn = serving if serving is not None else (head or 0)
    line = Line(queue_limit=queue_limit, in_flight=in_flight_count, backlog=head is not None)
    first = turn if last is None else max(turn, last + 1)
    now = as_datetime(db_now)
    assert now is not None
    return definition, first, line, now


_LINE_SQL: dict[str, str] = {}


def _line_sql(connection: Any) -> str:
    """The query of ``_load``; its parameters: the fairness key, the window + 1, the type."""
    t = connection.ops.quote_name(BatchTask._meta.db_table)
    d = connection.ops.quote_name(BatchTaskDefinition._meta.db_table)
    q = connection.ops.quote_name(BatchQueue._meta.db_table)
    in_flight, new = states_sql(*IN_FLIGHT_STATES), states_sql(TaskState.NEW)

    def over_types(pick: str) -> str:
        # One index lookup per type of the queue (``ORDER BY … LIMIT 1`` rather than
        # MIN/MAX over the whole backlog: the same answer from the partial indexes).
        return f"(SELECT {pick} FROM {d} qd WHERE qd.queue = d.queue)"

    return (
        f"SELECT {', '.join('d.' + f for f in DEFINITION_FIELDS)}, "
        f"(SELECT fair_round FROM {t} WHERE queue = d.queue AND state IN ({in_flight}) "
        "ORDER BY fair_round DESC LIMIT 1), "
        + over_types(
            f"MIN((SELECT fair_round FROM {t} WHERE definition_id = qd.id AND state = {new} "
            "ORDER BY fair_round LIMIT 1))"
        )
        + ", "
        + over_types(
            f"MAX((SELECT fair_round FROM {t} WHERE definition_id = qd.id AND state = {new} "
            "AND fairness_key = %s ORDER BY fair_round DESC LIMIT 1))"
        )
        + f", (SELECT max_concurrency FROM {q} WHERE name = d.queue), "
        f"(SELECT COUNT(*) FROM (SELECT 1 FROM {t} WHERE queue = d.queue "
        f"AND state IN ({in_flight}) LIMIT %s) AS in_flight), {Clock(connection).now} "
        f"FROM {d} d WHERE d.name = %s"
    )


def _checked(type_name: str, params: Any, *, index: int | None = None) -> Encoded:
    """``params`` checked by the type's plugin, then encoded; ``InvalidParameters`` if not."""
    params = {} if params is None else params
    try:
        registry.get(type_name).plugin.validate_params(params)
    except InvalidParameters as exc:
        if index is None:
            raise
        fields = {
            f"[{index}].{name}" if name else f"[{index}]": why for name, why in exc.fields.items()
        }
        raise InvalidParameters(f"Parameter set {index}: {exc}", fields=fields) from None
    return encode(params, type_name=type_name, limit=get_settings().MAX_PARAMS_BYTES)


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
    on_conflict: str = "return",
    fairness_key: Any = None,
    using: str | None = None,
) -> BatchTask:
    """Insert one task and its parameters; publish after the caller's transaction commits."""
    unique = check_text("unique_key", unique_key, 200, optional=True)
    if on_conflict not in ON_CONFLICT:
        raise InvalidTaskOption(
            f"on_conflict={on_conflict!r} must be one of {ON_CONFLICT}: 'return' gives back the "
            "unfinished task with the same unique_key, 'supersede' skips it if it is waiting."
        )
    encoded = _checked(type_name, params)
    request = _prepare(
        type_name,
        owner=owner,
        priority=priority,
        description=description,
        run_after=run_after,
        fairness_key=fairness_key,
        using=using,
    )
    task = request.new_task(request.first_round, unique, queued=request.admit_at_once(1))
    connection = connections[request.db]
    if unique is None and connection.vendor == "postgresql" and connection.get_autocommit():
        # One statement, atomic on its own: no BEGIN and COMMIT round trips of a
        # transaction (a single submit outside one: 4 round trips became 2).
        insert_task(task, encoded, using=request.db)
    else:
        # No savepoint of our own inside the caller's transaction: a failed insert fails it.
        with transaction.atomic(using=request.db, savepoint=False):
            if unique is None:
                insert_task(task, encoded, using=request.db)
            else:
                existing = _insert_unique(task, request, supersede=on_conflict == "supersede")
                if existing is not None:
                    return existing
                _parameters(task, encoded).save(using=request.db, force_insert=True)
    events.submitted([task], type_name)
    _after_insert([task], request)
    return task


def _after_insert(tasks: list[BatchTask], request: Request) -> None:
    """Publish tasks admitted at once, or let the dispatcher admit them, after commit."""
    queue = request.definition.queue
    if tasks[0].state == TaskState.QUEUED:
        size = per_message(request.definition, len(tasks), queue, using=request.db)
        runs = [run_of(t.pk, t.attempt, request.definition, size) for t in tasks]
        publish_on_commit(queue, runs, using=request.db)
    else:
        dispatch_on_commit(queue, using=request.db)


def _insert_unique(task: BatchTask, request: Request, *, supersede: bool) -> BatchTask | None:
    """Insert ``task`` unless an unfinished task has its key, and then return that one.

    With ``supersede`` a waiting task with the key is marked skipped first (Tridion's
    hash semantics); a running one cannot be, and is returned. The partial unique index
    decides races between concurrent submits.
    """
    db, key = request.db, task.unique_key
    assert key is not None
    for _ in range(3):
        if supersede:
            skipped = transitions.skip_waiting(request.definition.pk, key, using=db)
            for queue in {queue for _, queue in skipped if queue}:
                dispatch_on_commit(queue, using=db)
            events.finished_many([(pk, request.definition.name) for pk, _ in skipped], using=db)
        try:
            with transaction.atomic(using=db):
                task.save(using=db, force_insert=True)
            return None
        except IntegrityError:
            task.pk = None
        unfinished = BatchTask.objects.using(db).filter(
            definition=request.definition, unique_key=key, state__in=UNFINISHED_STATES
        )
        existing = unfinished.first()
        if existing is None:  # it finished in between: insert again
            continue
        if supersede and existing.state != TaskState.RUNNING:
            continue  # a concurrent submit's task, itself now superseded by this one
        # An identical task is not inserted twice, only its priority is raised.
        if task.priority > existing.priority and transitions.set_priority(
            existing.pk, task.priority, using=db
        ):
            existing.priority = task.priority
        return existing
    raise IntegrityError(f"could not insert a task with unique_key={key!r}; try again")


def _copy_with_round(template: BatchTask, fair_round: int) -> BatchTask:
    # What Model.__reduce__/__getstate__ (copy.copy) do, without their generic detours:
    # a fifth of their cost, which was half of submit_many's own time.
    task = BatchTask.__new__(BatchTask)
    task.__dict__.update(template.__dict__)
    state = task._state = ModelState()
    state.db, state.adding = template._state.db, template._state.adding
    state.fields_cache = dict(template._state.fields_cache)
    task.fair_round = fair_round
    return task


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
) -> TaskGroup:
    """Insert one task per parameter set in bulk, as one group; publish after the
    transaction commits."""
    if isinstance(params_list, dict | str | bytes):
        raise InvalidTaskOption(
            "submit_many takes a list of parameter sets, not a single "
            f"{type(params_list).__name__}; use submit() for one task."
        )
    encoded = [_checked(type_name, p, index=i) for i, p in enumerate(params_list)]
    request = _prepare(
        type_name,
        owner=owner,
        priority=priority,
        description=description,
        run_after=run_after,
        fairness_key=fairness_key,
        using=using,
    )
    group_id = uuid.uuid4()
    if not encoded:
        return TaskGroup((), group_id, using=request.db)
    with transaction.atomic(using=request.db, savepoint=False):
        first = request.first_round
        template = request.new_task(first, queued=request.admit_at_once(len(encoded)))
        template.group_id = group_id
        tasks = [_copy_with_round(template, first + i) for i in range(len(encoded))]
        insert_tasks(tasks, encoded, using=request.db)
    events.submitted(tasks, type_name)
    _after_insert(tasks, request)
    return TaskGroup(tasks, group_id, using=request.db)
