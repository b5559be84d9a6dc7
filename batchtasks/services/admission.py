"""Admission: whether a waiting task may start now, decided here for every submit and
dispatch path.

The dispatcher counts slots (a type's and its queue's ``max_concurrency``) under the
queue's lock. Two rules of a type look at its tasks' keys as well:

- ``max_concurrency_per_key=N``: at most N tasks with the same ``concurrency_key`` in
  flight (queued or running) at once, cluster-wide; the candidates of a key at its limit
  are passed over, and the next finish of that key's tasks refills at once.
- ``rate_limit="N/s"`` (or ``/m``, ``/h``): at most N starts per period per ``rate_key``
  (a GCRA row per key, ``core.limits``), counted when the dispatcher admits. A candidate
  beyond its key's budget is deferred: its ``run_after`` moves on to its earliest start,
  so that it leaves the due tasks (the dispatcher's next pick sees other keys and types)
  and the workers' agents wake when it falls due. The key's row stays the truth: a
  deferred task that falls due is checked again.

A type with either rule never skips the dispatcher (``may_skip_dispatcher``, and
``SKIP_DISPATCHER_SQL`` in the line's one-statement submit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connections

from .. import transitions
from ..core.limits import Rate, parse_rate
from ..core.states import IN_FLIGHT_STATES, TaskState
from ..db.sql import Clock, Tables, database_now, states_sql
from ..models import BatchTaskDefinition

#: The line's test, over a definition's columns, that its tasks may skip the dispatcher.
SKIP_DISPATCHER_SQL = (
    "max_concurrency IS NULL AND max_concurrency_per_key IS NULL AND rate_limit = ''"
)


def may_skip_dispatcher(definition: BatchTaskDefinition) -> bool:
    """Whether tasks of ``definition`` may be queued by their submit (the queue's window
    permitting): only types without limits of their own."""
    return (
        definition.max_concurrency is None
        and definition.max_concurrency_per_key is None
        and not definition.rate_limit
    )


@dataclass(frozen=True)
class KeyRules:
    """A type's rules over its tasks' keys."""

    definition_id: int
    per_key: int | None
    rate: Rate | None


def rules_of(definition_id: int, per_key: int | None, rate_limit: str) -> KeyRules | None:
    """The key rules of a type, or ``None`` if it has none. A ``rate_limit`` the admin
    form did not check (written by SQL) counts as none rather than stopping the queue."""
    try:
        rate = parse_rate(rate_limit or "")
    except ValueError:
        rate = None
    if per_key is None and rate is None:
        return None
    return KeyRules(definition_id, per_key, rate)


#: How many due tasks of a rate-limited type a pass reads at least (those over their
#: key's rate are deferred, the others admitted as far as there are free slots).
RATE_LOOKAHEAD = 500

#: A candidate: ``(priority, fair round, id, rate key)``.
Row = tuple[int, int, int, str]


@dataclass
class RateStarts:
    """The locked rate rows of a type's candidates, moved on by the starts admitted."""

    rules: KeyRules
    rate: Rate
    now: datetime
    tats: dict[str, datetime]
    keys: dict[int, str] = field(default_factory=dict)

    def record(self, admitted: set[int], db: str) -> None:
        counts: dict[str, int] = {}
        for pk, key in self.keys.items():
            if pk in admitted:
                counts[key] = counts.get(key, 0) + 1
        tats = {
            key: self.rate.after(self.rate.start(self.tats.get(key), self.now), n)
            for key, n in counts.items()
        }
        transitions.record_rate_starts(self.rules.definition_id, tats, using=db)


@dataclass
class Choice:
    """The ids a pass may admit, and what admitting them moves on."""

    ids: list[int]
    #: A type deferred tasks and may have more due behind them: pass again.
    again: bool = False
    starts: list[RateStarts] = field(default_factory=list)

    def record(self, admitted: list[Any], db: str) -> None:
        """Count the starts of the tasks admitted (rows whose first column is the id)."""
        ids = {row[0] for row in admitted}
        for starts in self.starts:
            starts.record(ids, db)


def choose(
    slots: list[tuple[int, int]], rules: dict[int, KeyRules], queue_free: int, db: str
) -> Choice:
    """The best ``queue_free`` due tasks of a queue's types (``(definition id, free
    slots)``), each type within its slots and its key rules, in (priority, fair turn,
    age) order; tasks over their rate are deferred on the way."""
    connection = connections[db]
    choice = Choice([])
    candidates: list[Row] = []
    for definition_id, room in slots:
        keyed = rules.get(definition_id)
        if keyed is None or keyed.rate is None:
            candidates.extend(_candidates(connection, definition_id, keyed, room))
            continue
        # Deferring needs no slot: look further than the free slots, so that a key over
        # its rate moves out of the way of the others even when few slots are free.
        look = max(room, RATE_LOOKAHEAD)
        rows = _candidates(connection, definition_id, keyed, look)
        if not rows:  # nothing due: no clock to read, no rows to lock
            continue
        startable, starts, deferred = _within_rate(keyed, keyed.rate, rows, db)
        choice.starts.append(starts)
        choice.again = choice.again or (deferred > 0 and len(rows) == look)
        candidates.extend(startable[:room])
    candidates.sort(key=lambda row: (-row[0], row[1], row[2]))
    choice.ids = [row[2] for row in candidates[:queue_free]]
    return choice


def _within_rate(
    rules: KeyRules, rate: Rate, rows: list[Row], db: str
) -> tuple[list[Row], RateStarts, int]:
    """The candidates within their key's budget; the others deferred to their earliest
    start (the i-th of a key in line: its next start on time plus i intervals, less the
    tolerance)."""
    now = database_now(db)
    tats = transitions.lock_rate_keys(rules.definition_id, {row[3] for row in rows}, now, using=db)
    starts = RateStarts(rules, rate, now, tats)
    startable: list[Row] = []
    deferrals: list[tuple[int, datetime]] = []
    places: dict[str, int] = {}
    for row in rows:
        key = row[3]
        place = places[key] = places.get(key, -1) + 1
        tat = tats.get(key)
        if place < rate.budget(tat, now):
            startable.append(row)
            starts.keys[row[2]] = key
        else:
            deferrals.append((row[2], rate.earliest(rate.start(tat, now), place)))
    transitions.defer(deferrals, using=db)
    return startable, starts, len(deferrals)


def _candidates(
    connection: Any, definition_id: int, rules: KeyRules | None, room: int
) -> list[Row]:
    """A type's best ``room`` due tasks; under ``max_concurrency_per_key`` only as many
    of each key as it has free slots."""
    if rules is None or rules.per_key is None:
        params: list[Any] = [definition_id, room]
        sql = _sql(connection, per_key=False)
    else:
        params = [definition_id, definition_id, rules.per_key, room]
        sql = _sql(connection, per_key=True)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [tuple(row) for row in cursor.fetchall()]


_SQL: dict[tuple[str, bool], str] = {}


def _sql(connection: Any, *, per_key: bool) -> str:
    """The pick of a type's due tasks. Per key: each task's place among its key's due
    tasks (a window function), plus the key's tasks in flight, within the limit."""
    cached = _SQL.get((connection.vendor, per_key))
    if cached is not None:
        return cached
    t = Tables(connection).task
    due = (
        f"definition_id = %s AND state = {states_sql(TaskState.NEW)} "
        f"AND (run_after IS NULL OR run_after <= {Clock(connection).now})"
    )
    order = "ORDER BY priority DESC, fair_round, id"
    if not per_key:
        sql = f"SELECT priority, fair_round, id, rate_key FROM {t} WHERE {due} {order} LIMIT %s"
    else:
        sql = (
            "SELECT c.priority, c.fair_round, c.id, c.rate_key FROM (SELECT priority, "
            "fair_round, id, rate_key, concurrency_key, ROW_NUMBER() OVER "
            f"(PARTITION BY concurrency_key {order}) AS place FROM {t} WHERE {due}) c "
            f"LEFT JOIN (SELECT concurrency_key, COUNT(*) AS busy FROM {t} "
            f"WHERE definition_id = %s AND state IN ({states_sql(*IN_FLIGHT_STATES)}) "
            "GROUP BY concurrency_key) f ON f.concurrency_key = c.concurrency_key "
            "WHERE c.place + COALESCE(f.busy, 0) <= %s "
            "ORDER BY c.priority DESC, c.fair_round, c.id LIMIT %s"
        )
    return _SQL.setdefault((connection.vendor, per_key), sql)
