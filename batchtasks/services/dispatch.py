"""The dispatcher: admit waiting tasks into their Celery queue, never past a limit.

A pass for one queue runs in a READ COMMITTED transaction holding that queue's lock
(its row, ``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's write lock taken at
``BEGIN``). It counts the queue's and each type's tasks in flight, admits as many due
``new`` tasks as there are free slots (priority, then fair turn, then age), commits,
and only then publishes one message per admitted attempt. A failed publish puts the
tasks back to ``new``. A queue row that was deleted is created again.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from .. import transitions
from ..core.conf import get_settings
from ..core.states import IN_FLIGHT_STATES, Isolation, TaskState
from ..db.connections import read_committed, reconnecting, state_db
from ..db.sql import Clock, states_sql
from ..models import BatchQueue, BatchTask, BatchTaskDefinition
from ..transport.publish import Run, publish
from . import admission
from .batching import per_message
from .definitions import ensure_queue

logger = logging.getLogger(__name__)

_counter = itertools.count()
#: Most passes of one ``dispatch_queue`` while a rate limit defers full picks.
MAX_PASSES = 20
_local = threading.local()


@dataclass(frozen=True)
class TypeSlot:
    """A type of the queue being dispatched, with its free slots."""

    definition_id: int
    limit: int | None
    in_flight: int

    def free(self, queue_free: int) -> int:
        if self.limit is None:
            return queue_free
        return min(queue_free, self.limit - self.in_flight)


def _last_pass() -> dict[tuple[str, str], int]:
    if not hasattr(_local, "last_pass"):
        _local.last_pass = {}
    return _local.last_pass


def dispatch_on_commit(queue: str, *, using: str) -> None:
    """Run a pass for ``queue`` once the current transaction commits (at once if none)."""
    token = next(_counter)

    def dispatch_after_commit() -> None:
        _after_commit(queue, using, token)

    transaction.on_commit(dispatch_after_commit, using=using, robust=True)


def publish_on_commit(queue: str, tasks: list[Run], *, using: str) -> None:
    """Publish tasks already marked queued once the current transaction commits."""

    def publish_after_commit() -> None:
        publish_or_unqueue(queue, tasks, using)

    transaction.on_commit(publish_after_commit, using=using, robust=True)


def _after_commit(queue: str, using: str, token: int) -> None:
    # Several submits in one transaction register several callbacks; a pass that
    # started after this one was registered has already seen its task.
    if _last_pass().get((using, queue), -1) > token:
        return
    # Django runs commit callbacks outside any transaction, except when a test runs them
    # inside its own (captureOnCommitCallbacks(execute=True)): pass there, or this
    # callback would defer itself again for ever.
    dispatch_queue(queue, using=using, defer_in_transaction=False)


def dispatch_queue(
    queue: str, *, using: str | None = None, defer_in_transaction: bool = True
) -> int:
    """Run one pass for ``queue`` and publish what it admitted; return how many. Inside a
    transaction the pass waits for its commit (unless ``defer_in_transaction`` is off)."""
    caller = using or router.db_for_write(BatchTask)
    if defer_in_transaction and connections[caller].in_atomic_block:
        dispatch_on_commit(queue, using=caller)
        return 0
    db = state_db(caller)
    _last_pass()[(caller, queue)] = next(_counter)
    # What a try admitted before its connection broke may have committed (the commit's
    # answer is what got lost): a retry publishes those that are queued, too.
    tried: list[Run] = []

    again = [False]

    def one_pass() -> list[Run]:
        earlier = _still_queued(tried, db)
        with transaction.atomic(using=db):
            read_committed(db)
            admitted, again[0] = _admit(queue, db)
            tried[:] = admitted
        return earlier + admitted

    total = 0
    for _ in range(MAX_PASSES):
        admitted = reconnecting(one_pass, db)
        if admitted:
            publish_or_unqueue(queue, admitted, db)
        total += len(admitted)
        # A rate-limited type deferred a full pick of tasks: more of its due tasks may
        # stand before other keys' (each pass moves a pick's worth out of the way).
        if not again[0]:
            break
        tried.clear()
    return total


def _still_queued(runs: list[Run], db: str) -> list[Run]:
    if not runs:
        return []
    queued = transitions.still_queued([(r.task_id, r.attempt) for r in runs], using=db)
    return [r for r in runs if (r.task_id, r.attempt) in queued]


def dispatch_all(queues: Iterable[str] | None = None, *, using: str | None = None) -> int:
    """Run a pass for each of ``queues`` (default: every known queue)."""
    db = using or router.db_for_write(BatchTask)
    if queues is None:
        queues = BatchQueue.objects.using(db).values_list("name", flat=True)
    return sum(dispatch_queue(queue, using=db) for queue in list(queues))


@dataclass(frozen=True)
class QueueType:
    """A type of the queue being dispatched, as its definition row says now."""

    definition_id: int
    limit: int | None
    enabled: bool
    timeout: int | None
    soft_timeout: int | None
    name: str = ""
    isolation: str = ""
    tasks_per_message: int | None = None
    run_seconds: float | None = None
    max_concurrency_per_key: int | None = None
    rate_limit: str = ""


def _lock_queue(queue: str, db: str) -> tuple[int | None, list[QueueType]] | None:
    """Lock the queue row; return its limit and its types, or ``None`` if it has no row."""
    connection = connections[db]
    q = connection.ops.quote_name(BatchQueue._meta.db_table)
    d = connection.ops.quote_name(BatchTaskDefinition._meta.db_table)
    lock = " FOR UPDATE OF q" if connection.features.has_select_for_update_of else ""
    if not lock:
        # No row locks (SQLite): take the database's write lock before reading anything.
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {q} SET name = name WHERE name = %s", [queue])
    sql = (
        "SELECT q.max_concurrency, d.id, d.max_concurrency, d.enabled, d.timeout, "
        "d.soft_timeout, d.name, d.isolation, d.tasks_per_message, d.run_seconds, "
        "d.max_concurrency_per_key, d.rate_limit "
        f"FROM {q} q LEFT JOIN {d} d ON d.queue = q.name "
        f"WHERE q.name = %s ORDER BY d.id{lock}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [queue])
        rows = cursor.fetchall()
    if not rows:
        return None
    types = [
        QueueType(row[1], row[2], bool(row[3]), *row[4:12]) for row in rows if row[1] is not None
    ]
    return rows[0][0], types


def _in_flight(queue: str, definition_ids: list[int], db: str) -> tuple[int, dict[int, int]]:
    """Tasks queued or running: in the queue, and of each of the types (in any queue)."""
    connection = connections[db]
    t = connection.ops.quote_name(BatchTask._meta.db_table)
    marks = ", ".join(["%s"] * len(definition_ids))
    sql = (
        f"SELECT definition_id, queue, COUNT(*) FROM {t} "
        f"WHERE state IN ({states_sql(*IN_FLIGHT_STATES)}) "
        f"AND (queue = %s OR definition_id IN ({marks})) GROUP BY definition_id, queue"
    )
    params: list[Any] = [queue, *definition_ids]
    in_queue = 0
    per_type: dict[int, int] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for definition_id, task_queue, count in cursor.fetchall():
            if task_queue == queue:
                in_queue += count
            per_type[definition_id] = per_type.get(definition_id, 0) + count
    return in_queue, per_type


def _admit(queue: str, db: str) -> tuple[list[Run], bool]:
    """Admit what the queue has room for; return the runs, and whether to pass again."""
    locked = _lock_queue(queue, db)
    if locked is None:
        if not BatchTaskDefinition.objects.using(db).filter(queue=queue).exists():
            return [], False
        # Its row was deleted while types still name it: without a row nothing would be
        # admitted again, so create it (with its configured limit) and go on.
        logger.warning("batchtasks queue row missing, created again queue=%s", queue)
        ensure_queue(queue, using=db)
        locked = _lock_queue(queue, db)
        if locked is None:
            return [], False
    queue_limit, types = locked
    enabled = {row.definition_id: row for row in types if row.enabled}
    if not enabled:
        return [], False
    in_queue, per_type = _in_flight(queue, list(enabled), db)
    cap = queue_limit if queue_limit is not None else get_settings().DISPATCH_WINDOW
    queue_free = cap - in_queue
    if queue_free <= 0:
        return [], False
    slots = [TypeSlot(pk, row.limit, per_type.get(pk, 0)) for pk, row in enabled.items()]
    open_slots = [slot for slot in slots if slot.free(queue_free) > 0]
    rules = _key_rules(enabled.values())
    again = False
    if any(slot.definition_id in rules for slot in open_slots):
        # Types with per-key rules: their own pick (services.admission), even alone.
        rooms = [(slot.definition_id, slot.free(queue_free)) for slot in open_slots]
        choice = admission.choose(rooms, rules, queue_free, db)
        admitted = transitions.admit(choice.ids, queue=queue, using=db)
        choice.record(admitted, db)
        again = choice.again
    elif len(open_slots) == 1:
        slot = open_slots[0]
        admitted = transitions.admit(
            None,
            queue=queue,
            using=db,
            definition_id=slot.definition_id,
            limit=slot.free(queue_free),
            skip_locked=connections[db].features.has_select_for_update_skip_locked,
        )
    elif open_slots:
        chosen = _merge_candidates(open_slots, queue_free, db)
        admitted = transitions.admit(chosen, queue=queue, using=db)
    else:
        return [], False
    return runs_in_order(queue, admitted, enabled, db), again


def _key_rules(types: Iterable[QueueType]) -> dict[int, admission.KeyRules]:
    rules = {}
    for row in types:
        keyed = admission.rules_of(row.definition_id, row.max_concurrency_per_key, row.rate_limit)
        if keyed is not None:
            rules[row.definition_id] = keyed
    return rules


def runs_in_order(
    queue: str, admitted: list[tuple[int, int, int, int, int]], types: dict[int, Any], db: str
) -> list[Run]:
    """The runs of the admitted ``(id, attempt, definition id, priority, fair round)``
    in the order they should run (priority, fair turn, age), each with how many of its
    type may share its message."""
    admitted = sorted(admitted, key=lambda row: (-row[3], row[4], row[0]))
    counts: dict[int, int] = {}
    for row in admitted:
        counts[row[2]] = counts.get(row[2], 0) + 1
    sizes = {pk: per_message(types[pk], n, queue, using=db) for pk, n in counts.items()}
    return [run_of(row[0], row[1], types[row[2]], sizes[row[2]]) for row in admitted]


def run_of(task_id: int, attempt: int, row: Any, per_message: int = 1) -> Run:
    """The message for an attempt, with the time limits and the name of its type, acked
    early if ``per_message`` runs of its type's measured time fit in ``EARLY_ACK_SECONDS``."""
    inline = row.isolation == Isolation.INLINE
    seconds = row.run_seconds
    early = bool(seconds) and seconds * per_message <= get_settings().EARLY_ACK_SECONDS
    return Run(
        task_id, attempt, row.timeout, row.soft_timeout, row.name, per_message, inline, early
    )


def _merge_candidates(slots: list[TypeSlot], queue_free: int, db: str) -> list[int]:
    """The best ``queue_free`` due tasks across several types, each within its own slots,
    in (priority, fair turn, age) order: the types of a queue share one line of turns."""
    connection = connections[db]
    if connection.vendor != "postgresql":
        return _merge_per_type(slots, queue_free, connection)
    frees = [slot.free(queue_free) for slot in slots]
    params = [[slot.definition_id for slot in slots], frees, _first_looks(frees, queue_free)]
    with connection.cursor() as cursor:
        cursor.execute(_merge_sql(connection), [*params, queue_free, queue_free])
        return [row[0] for row in cursor.fetchall()]


def _first_looks(frees: list[int], queue_free: int) -> list[int]:
    """How many of its best tasks each type shows first: its fair share of the queue's
    free slots (what a type with fewer free slots cannot use goes to the others), plus
    one that tells whether more of the type would make the cut."""
    looks = [0] * len(frees)
    left = queue_free
    by_room = sorted(range(len(frees)), key=frees.__getitem__)
    for done, i in enumerate(by_room):
        share = min(frees[i], -(-left // (len(frees) - done)))
        left -= share
        looks[i] = min(frees[i], share + 1)
    return looks


_MERGE_SQL: dict[str, str] = {}


def _merge_sql(connection: BaseDatabaseWrapper) -> str:
    """The merge as one PostgreSQL statement: a ``LATERAL`` range scan of
    ``batchtask_dispatch_idx`` per type, with the types, their free slots and their first
    looks as arrays, so that one text and one prepared plan serve any number of types.

    Each type first shows its share of the free slots plus one (``_first_looks``). A type
    one of whose shown tasks missed the cut is settled: its unseen tasks rank behind that
    one. Only a type all of whose shown tasks made the cut is read again, up to its own
    free slots. With 10 types waiting in turn this reads 510 rows to admit 500 (1.7-2.9 ms
    in EXPLAIN ANALYZE); one query per type read 5,000 (13 ms a pass in 10 round trips),
    and one lateral reading each type's full slots 5,000 too (6.4 ms).
    """
    if sql := _MERGE_SQL.get(connection.vendor):
        return sql
    t = connection.ops.quote_name(BatchTask._meta.db_table)

    def best_of(outer: str, limit: str) -> str:
        return (
            f"CROSS JOIN LATERAL (SELECT priority, fair_round, id FROM {t} "
            f"WHERE definition_id = {outer}.definition_id "
            f"AND state = {states_sql(TaskState.NEW)} "
            f"AND (run_after IS NULL OR run_after <= {Clock(connection).now}) "
            f"ORDER BY priority DESC, fair_round, id LIMIT {outer}.{limit}) c"
        )

    order = "ORDER BY priority DESC, fair_round, id LIMIT %s"
    sql = (
        "WITH slot AS MATERIALIZED (SELECT * FROM "
        "unnest(%s::bigint[], %s::int[], %s::int[]) AS s(definition_id, room, look)), "
        "shown AS MATERIALIZED (SELECT slot.definition_id, c.priority, c.fair_round, c.id "
        f"FROM slot {best_of('slot', 'look')}), "
        f"cut AS (SELECT definition_id FROM shown {order}), "
        "again AS (SELECT slot.definition_id, slot.room FROM slot JOIN cut USING "
        "(definition_id) WHERE slot.look < slot.room "
        "GROUP BY slot.definition_id, slot.room, slot.look HAVING COUNT(*) = slot.look) "
        "SELECT id FROM (SELECT priority, fair_round, id FROM shown "
        "WHERE definition_id NOT IN (SELECT definition_id FROM again) "
        f"UNION ALL SELECT c.priority, c.fair_round, c.id FROM again {best_of('again', 'room')}"
        f") AS candidate {order}"
    )
    return _MERGE_SQL.setdefault(connection.vendor, sql)


def _merge_per_type(
    slots: list[TypeSlot], queue_free: int, connection: BaseDatabaseWrapper
) -> list[int]:
    """The merge as one query per type, then in Python (SQLite)."""
    t = connection.ops.quote_name(BatchTask._meta.db_table)
    sql = (
        f"SELECT priority, fair_round, id FROM {t} WHERE definition_id = %s "
        f"AND state = {states_sql(TaskState.NEW)} "
        f"AND (run_after IS NULL OR run_after <= {Clock(connection).now}) "
        "ORDER BY priority DESC, fair_round, id LIMIT %s"
    )
    candidates: list[tuple[int, int, int]] = []
    with connection.cursor() as cursor:
        for slot in slots:
            cursor.execute(sql, [slot.definition_id, slot.free(queue_free)])
            candidates.extend(cursor.fetchall())
    candidates.sort(key=lambda row: (-row[0], row[1], row[2]))
    return [pk for _, _, pk in candidates[:queue_free]]


def publish_or_unqueue(queue: str, admitted: list[Run], db: str) -> None:
    """Publish runs of queued tasks; if the broker refuses, they go back to ``new``."""
    try:
        publish(queue, admitted)
    except Exception:
        logger.exception("batchtasks publish failed queue=%s tasks=%d", queue, len(admitted))
        transitions.unqueue([(run.task_id, run.attempt) for run in admitted], using=db)


# --- refill after a finish ------------------------------------------------------
_refill_times: dict[tuple[str, str], float] = {}


def refill(queue: str, *, limited: bool, using: str) -> bool:
    """Refill the slots a finished task or message freed: at once for limited queues and
    types, at most every ``REFILL_INTERVAL`` in this process for unlimited ones (a pass
    per task would cost as much as a tiny task; the window is large, and passes further
    apart admit more at a time, so messages stay full). Returns ``False`` if it skipped:
    the caller must see that a pass follows (a small window of tiny tasks can empty
    before this process's next refill is due)."""
    key = (using, queue)
    now = time.monotonic()
    if not limited and now - _refill_times.get(key, 0.0) < get_settings().REFILL_INTERVAL:
        return False
    _refill_times[key] = now
    dispatch_queue(queue, using=using)
    return True
