"""``submit`` and ``submit_many``: check everything, then insert in the caller's transaction."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.db.models.base import ModelState
from django.utils.translation import gettext as _

from .. import transitions
from ..core.codecs import Encoded, encode
from ..core.conf import get_settings
from ..core.exceptions import InvalidParameters, InvalidTaskOption, TaskTypeDisabled
from ..core.plugin import BatchTaskPlugin
from ..core.registry import registry
from ..core.states import UNFINISHED_STATES, TaskState
from ..models import BatchTask, BatchTaskDefinition, BatchTaskParameters, TaskGroup
from . import deferred, depends, events, line
from .batching import per_message
from .bulk import insert_task, insert_tasks
from .definitions import get_definition
from .dispatch import dispatch_on_commit, publish_on_commit, run_of
from .line import Loaded
from .validation import check_owner, check_priority, check_run_after, check_text


@dataclass(frozen=True)
class Keys:
    """A task's keys for its type's per-key limits (``services.admission``)."""

    concurrency_key: str = ""
    rate_key: str = ""

    @classmethod
    def checked(cls, concurrency_key: Any, rate_key: Any) -> Keys:
        """The keys given to a submit (``None``: ""), checked like any key."""
        return cls(
            check_text("concurrency_key", concurrency_key, 200, optional=True) or "",
            check_text("rate_key", rate_key, 200, optional=True) or "",
        )


@dataclass(frozen=True)
class Options:
    """A submit's options, checked; ``priority`` is ``None`` for the type's default."""

    type_name: str
    owner_id: int | None
    priority: int | None
    description: str
    run_after: datetime | timedelta | None
    fairness_key: str
    db: str
    keys: Keys


@dataclass(frozen=True)
class Request:
    """Everything checked about a submit, ready to insert."""

    definition: BatchTaskDefinition
    owner_id: int | None
    priority: int
    description: str
    run_after: datetime | None
    fairness_key: str
    loaded: Loaded
    db: str
    keys: Keys = Keys()

    @property
    def first_round(self) -> int:
        return self.loaded.first_round

    def new_task(
        self, fair_round: int, unique_key: str | None = None, *, queued: bool = False
    ) -> BatchTask:
        # Every time written comes from the database's clock, read with the line.
        now = self.loaded.now
        task = BatchTask(
            definition=self.definition,
            owner_id=self.owner_id,
            priority=self.priority,
            description=self.description,
            run_after=self.run_after,
            fairness_key=self.fairness_key,
            concurrency_key=self.keys.concurrency_key,
            rate_key=self.keys.rate_key,
            fair_round=fair_round,
            unique_key=unique_key,
            created_at=now,
            updated_at=now,
        )
        if queued:
            task.state, task.queue = TaskState.QUEUED, self.definition.queue
            task.queued_at = now
        return task

    def admissible(self) -> int:
        """How many new tasks may skip the dispatcher (``line``)."""
        return self.loaded.admissible(self.run_after)


def _delay_from(now: datetime, delay: timedelta) -> datetime:
    """``now + delay``, or ``InvalidTaskOption`` if that is no date a calendar holds."""
    try:
        return now + delay
    except OverflowError:
        raise InvalidTaskOption(
            _(
                "run_after=%(delay)s from now falls outside the years 1 to 9999; pass a "
                "shorter delay."
            )
            % {"delay": repr(delay)}
        ) from None


def _check(
    type_name: str,
    *,
    owner: Any,
    priority: Any,
    description: Any,
    run_after: Any,
    fairness_key: Any,
    using: str | None,
    keys: Keys = Keys(),
) -> Options:
    registry.get(type_name)
    checked_priority = None if priority is None else check_priority(priority)
    text = check_text("description", description, 500, optional=False) or ""
    key = check_text("fairness_key", fairness_key, 200, optional=True)
    owner_id = check_owner(owner)
    when = check_run_after(run_after)
    if key is None:
        key = "" if owner_id is None else f"user:{owner_id}"
    db = using or router.db_for_write(BatchTask)
    return Options(type_name, owner_id, checked_priority, text, when, key, db, keys)


def _prepare(options: Options) -> Request:
    """Read the type's line and check the type may take tasks."""
    type_name, db = options.type_name, options.db
    loaded = line.load(type_name, options.fairness_key, db)
    if loaded is None:  # first use of the type: create its definition from the code
        get_definition(type_name, using=db)
        loaded = line.load(type_name, options.fairness_key, db)
        assert loaded is not None
    definition = loaded.definition
    when = options.run_after
    if isinstance(when, timedelta):  # from the database's clock, as every time written
        when = _delay_from(loaded.now, when)
    _check_enabled(definition)
    return Request(
        definition=definition,
        owner_id=options.owner_id,
        priority=definition.priority if options.priority is None else options.priority,
        description=options.description,
        run_after=when,
        fairness_key=options.fairness_key,
        loaded=loaded,
        db=db,
        keys=options.keys,
    )


def _check_enabled(definition: BatchTaskDefinition) -> None:
    if not definition.enabled:
        raise TaskTypeDisabled(
            _(
                "Task type %(type)s is disabled; enable its definition in the admin (Batch task "
                "definitions) before submitting."
            )
            % {"type": repr(definition.name)}
        )


def _join(options: Options, encoded: Encoded) -> BatchTask:
    """Insert one task at its place in the line in one statement (PostgreSQL)."""
    assert not isinstance(options.run_after, timedelta)
    task = BatchTask(
        owner_id=options.owner_id,
        description=options.description,
        run_after=options.run_after,
        fairness_key=options.fairness_key,
        concurrency_key=options.keys.concurrency_key,
        rate_key=options.keys.rate_key,
    )

    def join() -> line.Joined | None:
        return line.join(
            task,
            encoded,
            type_name=options.type_name,
            key=options.fairness_key,
            priority=options.priority,
            db=options.db,
        )

    joined = join()
    if joined is None:  # first use of the type: create its definition from the code
        get_definition(options.type_name, using=options.db)
        joined = join()
        assert joined is not None
    if not joined.inserted:
        _check_enabled(joined.loaded.definition)
    return task


ON_CONFLICT = ("return", "supersede")


def _checked(
    type_name: str,
    params: Any,
    *,
    index: int | None = None,
    plugin: type[BatchTaskPlugin] | None = None,
    limit: int | None = None,
) -> Encoded:
    """``params`` checked by the type's plugin, then encoded; ``InvalidParameters`` if not.
    ``submit_many`` passes the plugin and the size limit, looked up once for all sets."""
    params = {} if params is None else params
    plugin = plugin or registry.get(type_name).plugin
    try:
        plugin.validate_params(params)
    except InvalidParameters as exc:
        if index is None:
            raise
        fields = {
            f"[{index}].{name}" if name else f"[{index}]": why for name, why in exc.fields.items()
        }
        raise InvalidParameters(
            _("Parameter set %(index)s: %(error)s") % {"index": index, "error": exc},
            fields=fields,
        ) from None
    limit = get_settings().MAX_PARAMS_BYTES if limit is None else limit
    return encode(params, type_name=type_name, limit=limit)


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
    concurrency_key: Any = None,
    rate_key: Any = None,
    depends_on: Iterable[Any] | None = None,
    on_parent_failure: str = "skip",
    using: str | None = None,
) -> BatchTask:
    """Insert one task and its parameters; publish after the caller's transaction commits.
    With ``depends_on`` it waits ``blocked`` for its parents (``services.depends``)."""
    unique = check_text("unique_key", unique_key, 200, optional=True)
    if on_conflict not in ON_CONFLICT:
        raise InvalidTaskOption(
            f"on_conflict={on_conflict!r} must be one of {ON_CONFLICT}: 'return' gives back the "
            "unfinished task with the same unique_key, 'supersede' skips it if it is waiting."
        )
    encoded = _checked(type_name, params)
    options = _check(
        type_name,
        owner=owner,
        priority=priority,
        description=description,
        run_after=run_after,
        fairness_key=fairness_key,
        using=using,
        keys=Keys.checked(concurrency_key, rate_key),
    )
    policy = depends.check_policy(on_parent_failure)
    app_db = deferred.waiting_for(options.db)
    if app_db is not None:
        return _insert_after_commit(
            app_db,
            options,
            encoded,
            unique=unique,
            on_conflict=on_conflict,
            depends_on=depends_on,
            policy=policy,
        )
    parents = depends.parent_ids(depends_on, options.db)
    return _insert_one(
        options, encoded, unique=unique, on_conflict=on_conflict, parents=parents, policy=policy
    )


def _insert_one(
    options: Options,
    encoded: Encoded,
    *,
    unique: str | None,
    on_conflict: str,
    parents: list[int],
    policy: Any,
    pk: int | None = None,
) -> BatchTask:
    """Insert the task (with id ``pk``, if given) and publish it after commit."""
    connection = connections[options.db]
    if (
        unique is None
        and not parents
        and pk is None
        and connection.vendor == "postgresql"
        and not isinstance(options.run_after, timedelta)
    ):
        # One statement reads the line and inserts, atomic on its own: outside a
        # transaction, no BEGIN and COMMIT round trips either (4 round trips became 1).
        task = _join(options, encoded)
        events.submitted([task], options.type_name)
        _after_insert([task], task.definition, options.db)
        return task
    request = _prepare(options)
    # A task with parents is never queued at once (nor counted against limits) until
    # the last of them is final.
    queued = not parents and request.admissible() > 0
    task = request.new_task(request.first_round, unique, queued=queued)
    task.pk = pk
    if parents:
        depends.blocked(task, parents, policy)
    # No savepoint of our own inside the caller's transaction: a failed insert fails it.
    with transaction.atomic(using=request.db, savepoint=False):
        if unique is None:
            insert_task(task, encoded, using=request.db)
        else:
            existing = _insert_unique(task, request, supersede=on_conflict == "supersede")
            if existing is not None:
                return existing
            _parameters(task, encoded).save(using=request.db, force_insert=True)
        settled = depends.attach([task.pk], parents, request.db) if parents else None
    events.submitted([task], options.type_name)
    _after_insert([task], request.definition, request.db)
    if settled is not None:
        _settled_at_submit([task], settled, request.db)
    return task


def _insert_after_commit(
    app_db: str,
    options: Options,
    encoded: Encoded,
    *,
    unique: str | None,
    on_conflict: str,
    depends_on: Iterable[Any] | None,
    policy: Any,
) -> BatchTask:
    """Inside a transaction of the application's database (a task database of its own):
    the task, not yet saved but with its id taken, inserted once that transaction
    commits, and then the same object as saved (``services.deferred``)."""
    request = _prepare(options)
    task = request.new_task(request.first_round, unique)
    task.pk = deferred.take_ids(1, options.db)[0]
    if depends_on is not None:
        depends_on = depends.later(depends_on)
        task.state = TaskState.BLOCKED if depends_on else task.state

    def insert() -> None:
        parents = depends.parent_ids(depends_on, options.db)
        saved = _insert_one(
            options,
            encoded,
            unique=unique,
            on_conflict=on_conflict,
            parents=parents,
            policy=policy,
            pk=task.pk,
        )
        task.__dict__.update(saved.__dict__)

    deferred.after_commit(app_db, options.db, insert, f"type={options.type_name} task={task.pk}")
    return task


def _settled_at_submit(tasks: list[BatchTask], settled: Any, db: str) -> None:
    """Act on the parents found final at submit; reload the children they settled."""
    depends.act_on(settled, db)
    if settled.due or settled.ended:
        fresh = BatchTask.objects.using(db).in_bulk([t.pk for t in tasks])
        for task in tasks:
            for name in ("state", "pending_parents", "error_message", "finished_at"):
                setattr(task, name, getattr(fresh[task.pk], name))


def _after_insert(tasks: list[BatchTask], definition: BatchTaskDefinition, db: str) -> None:
    """After commit, publish the tasks admitted at once (the first ones, if any); if none
    were, let the dispatcher admit them. Those left waiting behind admitted ones have a
    full window before them: the slots the admitted ones free refill it."""
    queue = definition.queue
    admitted = tasks
    if tasks[-1].state == TaskState.BLOCKED:  # their parents' final writes make them due
        return
    if tasks[-1].state != TaskState.QUEUED:
        admitted = [t for t in tasks if t.state == TaskState.QUEUED]
    if not admitted:
        dispatch_on_commit(queue, using=db)
        return
    size = per_message(definition, len(admitted), queue, using=db)
    runs = [run_of(t.pk, t.attempt, definition, size) for t in admitted]
    publish_on_commit(queue, runs, using=db)


def _insert_unique(task: BatchTask, request: Request, *, supersede: bool) -> BatchTask | None:
    """Insert ``task`` unless an unfinished task has its key, and then return that one.

    With ``supersede`` a waiting task with the key is marked skipped first (Tridion's
    hash semantics); a running one cannot be, and is returned. The partial unique index
    decides races between concurrent submits.
    """
    db, key = request.db, task.unique_key
    assert key is not None
    for _attempt in range(3):
        if supersede:
            skipped, settled = transitions.skip_waiting(request.definition.pk, key, using=db)
            for queue in {queue for _pk, queue in skipped if queue}:
                dispatch_on_commit(queue, using=db)
            events.finished_many([(pk, request.definition.name) for pk, _ in skipped], using=db)
            depends.act_on(settled, db)
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
    concurrency_key: Any = None,
    rate_key: Any = None,
    depends_on: Iterable[Any] | None = None,
    on_parent_failure: str = "skip",
    using: str | None = None,
) -> TaskGroup:
    """Insert one task per parameter set in bulk, as one group; publish after the
    transaction commits. With ``depends_on`` each waits for those parents."""
    if isinstance(params_list, dict | str | bytes):
        raise InvalidTaskOption(
            "submit_many takes a list of parameter sets, not a single "
            f"{type(params_list).__name__}; use submit() for one task."
        )
    plugin, limit = registry.get(type_name).plugin, get_settings().MAX_PARAMS_BYTES
    encoded = [
        _checked(type_name, p, index=i, plugin=plugin, limit=limit)
        for i, p in enumerate(params_list)
    ]
    options = _check(
        type_name,
        owner=owner,
        priority=priority,
        description=description,
        run_after=run_after,
        fairness_key=fairness_key,
        using=using,
        keys=Keys.checked(concurrency_key, rate_key),
    )
    policy = depends.check_policy(on_parent_failure)
    group = TaskGroup((), uuid.uuid4(), using=options.db)
    app_db = deferred.waiting_for(options.db)
    if app_db is None:
        parents = depends.parent_ids(depends_on, options.db)
        group[:] = _insert_many(_prepare(options), encoded, parents, policy, group.id)
        return group
    # Inside the application's transaction (a task database of its own): inserted once it
    # commits, and then the group holds its tasks; its id is known at once.
    _prepare(options)  # the type may take tasks
    later = None if depends_on is None else depends.later(depends_on)

    def insert() -> None:
        parents = depends.parent_ids(later, options.db)
        group[:] = _insert_many(_prepare(options), encoded, parents, policy, group.id)

    deferred.after_commit(app_db, options.db, insert, f"type={type_name} group={group.id}")
    return group


def _insert_many(
    request: Request, encoded: list[Encoded], parents: list[int], policy: Any, group_id: Any
) -> list[BatchTask]:
    if not encoded:
        return []
    with transaction.atomic(using=request.db, savepoint=False):
        first = request.first_round
        at_once = 0 if parents else min(len(encoded), request.admissible())
        queued = request.new_task(first, queued=True)
        waiting = request.new_task(first + at_once)
        if parents:
            depends.blocked(waiting, parents, policy)
        queued.group_id = waiting.group_id = group_id
        tasks = [_copy_with_round(queued, first + i) for i in range(at_once)]
        tasks += [_copy_with_round(waiting, first + i) for i in range(at_once, len(encoded))]
        insert_tasks(tasks, encoded, using=request.db)
        settled = depends.attach([t.pk for t in tasks], parents, request.db) if parents else None
    events.submitted(tasks, request.definition.name)
    _after_insert(tasks, request.definition, request.db)
    if settled is not None:
        _settled_at_submit(tasks, settled, request.db)
    return tasks
