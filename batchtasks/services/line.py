"""Where a new task joins its type's line: its fair turn, and whether it may skip the
dispatcher, read with the live definition and the database's clock in one query.

Start-time fair queueing, one line of turns per queue (its types share it): a task's
turn comes after its key's own waiting tasks and never before the turn being served
now (the newest in flight, else the head of the line), so a newcomer waits at most
one round whatever the backlog of others.

A task may skip the dispatcher (published after commit at once) only for a type and
queue without limits (``admission.may_skip_dispatcher``: none per type, per key or of
rate), when nothing of the type waits (so no one is overtaken) and the queue's window
has room: a soft bound, which concurrent submits may overshoot by a few tasks. Of a
``submit_many``, the first tasks skip it as far as the window has room; the rest wait
for it. Limited types always go through the dispatcher's lock.

``join`` does all of it and the insert in one statement on PostgreSQL (a single submit's
round trips went from 2 to 1); ``load`` reads the line for the other paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connections

from ..core.codecs import Encoded
from ..core.conf import get_settings
from ..core.states import IN_FLIGHT_STATES, TaskState
from ..db import prepared
from ..db.sql import Clock, Tables, as_datetime, param_type, states_sql
from ..models import BatchTask, BatchTaskDefinition
from .admission import SKIP_DISPATCHER_SQL, may_skip_dispatcher

# In the model's field order, as Model.from_db expects: what submit and publish read.
DEFINITION_FIELDS = [
    f.attname
    for f in BatchTaskDefinition._meta.concrete_fields
    if f.attname
    in {
        "id",
        "name",
        "queue",
        "priority",
        "enabled",
        "max_concurrency",
        "max_concurrency_per_key",
        "rate_limit",
        "timeout",
        "soft_timeout",
        "isolation",
        "tasks_per_message",
        "run_seconds",
    }
]
LINE_COLUMNS = [*DEFINITION_FIELDS, "serving", "head", "last", "queue_limit", "in_flight", "now"]


@dataclass(frozen=True)
class Line:
    """The state of a type's line when a task joins it."""

    queue_limit: int | None
    in_flight: int
    backlog: bool


@dataclass(frozen=True)
class Loaded:
    """The live definition, the next turn of a fairness key, the line and the clock."""

    definition: BatchTaskDefinition
    first_round: int
    line: Line
    now: datetime

    def admissible(self, run_after: datetime | None) -> int:
        """How many new tasks may skip the dispatcher: the room left in the queue's
        window, or none (see the module text)."""
        line = self.line
        if (
            not may_skip_dispatcher(self.definition)
            or line.queue_limit is not None
            or line.backlog
            or (run_after is not None and run_after > self.now)
        ):
            return 0
        return max(0, get_settings().DISPATCH_WINDOW - line.in_flight)


def load(type_name: str, key: str, db: str) -> Loaded | None:
    """The line of ``type_name`` for a task of fairness key ``key``; ``None`` if the type
    has no definition row yet."""
    connection = connections[db]
    with connection.cursor() as cursor:
        prepared.execute(cursor, "line", _line_sql(connection), _line_params(type_name, key))
        row = cursor.fetchone()
    return None if row is None else _loaded(db, row)


def _loaded(db: str, row: Any) -> Loaded:
    n = len(DEFINITION_FIELDS)
    definition = BatchTaskDefinition.from_db(db, DEFINITION_FIELDS, row[:n])
    serving, head, last, queue_limit, in_flight, db_now = row[n : len(LINE_COLUMNS)]
    turn = serving if serving is not None else (head or 0)
    line = Line(queue_limit=queue_limit, in_flight=in_flight, backlog=head is not None)
    now = as_datetime(db_now)
    assert now is not None
    return Loaded(definition, turn if last is None else max(turn, last + 1), line, now)


#: The columns of a task that ``join`` takes from its line, not from the task.
DECIDED = frozenset(
    {"definition_id", "fair_round", "state", "queue", "queued_at", "created_at", "updated_at"}
)


#: The columns of a task given to ``join``; the others take the model's defaults.
GIVEN = frozenset(
    {"owner_id", "description", "run_after", "fairness_key", "concurrency_key", "rate_key"}
)
_DEFAULTS: dict[str, dict[str, Any]] = {}


def _defaults(connection: Any) -> dict[str, Any]:
    """The database values of a new task's columns (constants: the callable defaults are
    the times ``DECIDED`` leaves to the database), prepared once per backend."""
    defaults = _DEFAULTS.get(connection.vendor)
    if defaults is None:
        blank = BatchTask()
        defaults = _DEFAULTS[connection.vendor] = {
            f.attname: f.get_db_prep_save(getattr(blank, f.attname), connection)
            for f in _fields()
            if f.attname not in DECIDED | GIVEN
        }
    return defaults


def _fields() -> list[Any]:
    return [f for f in BatchTask._meta.concrete_fields if not f.primary_key]


@dataclass(frozen=True)
class Joined:
    """The outcome of ``join``: the line as the task found it; ``inserted`` is false
    when the type is disabled (nothing was inserted)."""

    loaded: Loaded
    inserted: bool


def join(
    task: BatchTask,
    encoded: Encoded,
    *,
    type_name: str,
    key: str,
    priority: int | None,
    db: str,
) -> Joined | None:
    """Insert ``task`` of ``type_name`` and its parameters at its place in the line, in
    one statement (PostgreSQL only). ``task`` is new, with only the columns of ``GIVEN``
    set; the line decides those of ``DECIDED`` (and the priority, when ``priority`` is
    ``None``: the type's default) and they are set on ``task``. ``None`` if the type has
    no definition row yet."""
    connection = connections[db]
    defaults = _defaults(connection)
    # In column order, as ``_join_sql`` places them; the priority may be NULL.
    values = [
        priority
        if f.attname == "priority"
        else f.get_db_prep_save(getattr(task, f.attname), connection)
        if f.attname in GIVEN
        else defaults[f.attname]
        for f in _fields()
        if f.attname not in DECIDED
    ]
    params = [
        *_line_params(type_name, key),
        get_settings().DISPATCH_WINDOW,
        task.run_after,
        task.run_after,
        *values,
        encoded.data,
        encoded.codec,
        encoded.size,
    ]
    with connection.cursor() as cursor:
        prepared.execute(cursor, "join", _join_sql(connection), params)
        row = cursor.fetchone()
    if row is None:
        return None
    loaded = _loaded(db, row)
    pk, state, fair_round, chosen_priority, queue = row[len(LINE_COLUMNS) :]
    if pk is None:
        return Joined(loaded, inserted=False)
    task.pk, task.state, task.fair_round, task.queue = pk, state, fair_round, queue
    task.priority = chosen_priority
    task.definition = loaded.definition
    task.created_at = task.updated_at = loaded.now
    task.queued_at = loaded.now if state == TaskState.QUEUED else None
    task._state.adding = False
    task._state.db = db
    return Joined(loaded, inserted=True)


def _line_params(type_name: str, key: str) -> list[Any]:
    return [key, get_settings().DISPATCH_WINDOW + 1, type_name]


_SQL: dict[tuple[str, str], str] = {}


def _line_sql(connection: Any) -> str:
    """The line query; its parameters: the fairness key, the window + 1, the type."""
    cached = _SQL.get(("line", connection.vendor))
    if cached is not None:
        return cached
    tables = Tables(connection)
    t, d, q = tables.task, tables.definition, tables.queue
    in_flight, new = states_sql(*IN_FLIGHT_STATES), states_sql(TaskState.NEW)

    def over_types(pick: str) -> str:
        # One index lookup per type of the queue (``ORDER BY … LIMIT 1`` rather than
        # MIN/MAX over the whole backlog: the same answer from the partial indexes).
        return f"(SELECT {pick} FROM {d} qd WHERE qd.queue = d.queue)"

    sql = (
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
    return _SQL.setdefault(("line", connection.vendor), sql)


def _join_sql(connection: Any) -> str:
    """``join``'s statement: the line query, the admission test, both inserts.

    Parameters: the line's three, the window and the task's ``run_after`` twice (the
    admission test), one per column the line does not decide, the priority among them
    (``NULL``: the type's), then the parameters row's data, codec and size.
    """
    cached = _SQL.get(("join", connection.vendor))
    if cached is not None:
        return cached
    tables = Tables(connection)
    quote = connection.ops.quote_name
    queued, new = states_sql(TaskState.QUEUED), states_sql(TaskState.NEW)
    decided = {
        "definition_id": "l.id",
        "priority": "COALESCE(%s, l.priority)",
        "fair_round": "GREATEST(COALESCE(l.serving, l.head, 0), l.last + 1)",
        "state": f"CASE WHEN l.admit THEN {queued} ELSE {new} END",
        "queue": "CASE WHEN l.admit THEN l.queue ELSE '' END",
        "queued_at": "CASE WHEN l.admit THEN l.now END",
        "created_at": "l.now",
        "updated_at": "l.now",
    }
    assert set(decided) == DECIDED | {"priority"}
    columns = ", ".join(quote(f.column) for f in _fields())
    select = ", ".join(
        decided.get(f.attname) or f"CAST(%s AS {param_type(f, connection)})" for f in _fields()
    )
    sql = (
        f"WITH line ({', '.join(LINE_COLUMNS)}) AS ({_line_sql(connection)}), "
        f"l AS (SELECT line.*, ({SKIP_DISPATCHER_SQL} AND queue_limit IS NULL "
        "AND head IS NULL AND in_flight + 1 <= %s "
        "AND (%s::timestamptz IS NULL OR %s::timestamptz <= now)) AS admit "
        "FROM line WHERE enabled), "
        f"task AS (INSERT INTO {tables.task} ({columns}) SELECT {select} FROM l "
        "RETURNING id, state, fair_round, priority, queue), "
        f"parameters AS (INSERT INTO {tables.params} (task_id, data, codec, size) "
        "SELECT id, %s::bytea, %s, %s::integer FROM task) "
        f"SELECT {', '.join('line.' + c for c in LINE_COLUMNS)}, task.id, task.state, "
        "task.fair_round, task.priority, task.queue FROM line LEFT JOIN task ON TRUE"
    )
    return _SQL.setdefault(("join", connection.vendor), sql)
