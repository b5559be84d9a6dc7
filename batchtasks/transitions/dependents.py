"""The writes that follow a parent's final outcome to its children (``depends_on``).

A child waits ``blocked`` with a count of unfinished parents. Each write that makes a
parent final calls ``settle`` in its own transaction: the parent's links are marked
settled (a parent retried and finished again is never counted twice), children whose
policy is ``skip`` are skipped if it did not succeed (naming it), and the others are
counted down; the last parent's write makes a child ``new``, due for the dispatcher.
Skipped children are final too, so their own children are settled in turn. A child
counted down by several parents in one call drops by all of them in one statement.

``link`` makes the links of a new child; ``cancel_descendants`` cancels the blocked
descendants of a task (``cancel(cascade=True)``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from ..core.states import FINAL_STATES, WRITES, TaskState
from ..db.sql import Clock, Tables, states_sql
from .finalizing import finalize_marks

#: The error type of a task skipped because a parent did not succeed.
PARENT_NOT_SUCCEEDED = "batchtasks.ParentNotSucceeded"


@dataclass
class Settled:
    """What settling children did: the queues of children made due, and the children
    that ended (skipped, or cancelled by a cascade) as ``(id, type name)``."""

    due: set[str] = field(default_factory=set)
    ended: list[tuple[int, str]] = field(default_factory=list)

    def add(self, other: Settled) -> None:
        self.due |= other.due
        self.ended += other.ended


def in_ids(connection: BaseDatabaseWrapper, column: str, ids: list[int]) -> tuple[str, list[Any]]:
    """``column`` matches one of ``ids``: one array parameter on PostgreSQL."""
    if connection.vendor == "postgresql":
        return f"{column} = ANY(%s::bigint[])", [array_text(ids)]
    return f"{column} IN ({', '.join(['%s'] * len(ids))})", list(ids)


def array_text(ids: Iterable[int]) -> str:
    """A PostgreSQL array literal of integers: the driver quotes a list of 10,000 ints
    element by element (0.1 s), a string at once."""
    return "{" + ",".join(str(int(pk)) for pk in ids) + "}"


def chunks(connection: BaseDatabaseWrapper, ids: list[int]) -> Iterator[list[int]]:
    """``ids`` in pieces one statement takes (SQLite limits a statement's parameters)."""
    size = 50_000 if connection.vendor == "postgresql" else 500
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def settle(finished: Iterable[tuple[int, str]], *, using: str) -> Settled:
    """Count the final outcomes of ``finished`` (``(task id, state)``) for their blocked
    children, transitively through the children skipped. Call it in the transaction of
    the write that made them final (or that linked a child to them)."""
    settled = Settled()
    level = [(pk, state) for pk, state in finished if state in FINAL_STATES]
    while level:
        links = _settle_links([pk for pk, _ in level], using)
        failed = {pk: state for pk, state in level if state != TaskState.SUCCEEDED}
        skipped = _skip(links, failed, using, settled)
        counts: dict[int, int] = defaultdict(int)
        for _, kid in links:
            if kid not in skipped:
                counts[kid] += 1
        _count_down(counts, using, settled)
        level = [(pk, TaskState.SKIPPED) for pk, has_children in skipped.items() if has_children]
    return settled


def _settle_links(parents: list[int], using: str) -> list[tuple[int, int]]:
    """Mark the unsettled links of ``parents`` settled; return them as (parent, child)."""
    connection = connections[using]
    t = Tables(connection)
    links: list[tuple[int, int]] = []
    for part in chunks(connection, parents):
        match, values = in_ids(connection, "parent_id", part)
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {t.dependency} SET settled = TRUE WHERE {match} "
                "AND NOT settled RETURNING parent_id, child_id",
                values,
            )
            links += [(row[0], row[1]) for row in cursor.fetchall()]
    return links


def _skip(
    links: list[tuple[int, int]], failed: dict[int, str], using: str, settled: Settled
) -> dict[int, bool]:
    """Skip the blocked children (policy ``skip``) of parents that did not succeed, each
    naming the first such parent found; return them with whether they have children."""
    by_parent: dict[int, list[int]] = defaultdict(list)
    seen: set[int] = set()
    for parent, kid in links:
        if parent in failed and kid not in seen:
            seen.add(kid)
            by_parent[parent].append(kid)
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    skipped: dict[int, bool] = {}
    for parent, kids in by_parent.items():
        reason = f"Skipped: its parent task {parent} ended {failed[parent]}."
        for part in chunks(connection, kids):
            match, values = in_ids(connection, "id", part)
            with connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {t.task} SET state = '{TaskState.SKIPPED}', pending_parents = 0, "
                    f"finished_at = {clock.now}, updated_at = {clock.now}, error_message = %s, "
                    f"error_type = '{PARENT_NOT_SUCCEEDED}'"
                    f"{finalize_marks('TRUE', t, clock)} WHERE {match} "
                    "AND on_parent_failure = 'skip' "
                    f"AND state IN ({states_sql(*WRITES['skip_blocked'].sources)}) "
                    f"RETURNING id, child_count, "
                    f"(SELECT d.name FROM {t.definition} d WHERE d.id = definition_id)",
                    [reason, *values],
                )
                for pk, children, name in cursor.fetchall():
                    skipped[pk] = children > 0
                    settled.ended.append((pk, name))
    return skipped


def _count_down(counts: dict[int, int], using: str, settled: Settled) -> None:
    """Drop each blocked child's count of unfinished parents by its number of parents
    just settled (one statement per distinct number); a child at 0 becomes ``new``."""
    by_count: dict[int, list[int]] = defaultdict(list)
    for kid, n in counts.items():
        by_count[n].append(kid)
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    sources = states_sql(*WRITES["count_down"].sources)
    for n, kids in by_count.items():
        for part in chunks(connection, kids):
            match, values = in_ids(connection, "id", part)
            with connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {t.task} SET pending_parents = CASE WHEN pending_parents > %s "
                    "THEN pending_parents - %s ELSE 0 END, "
                    f"state = CASE WHEN pending_parents <= %s THEN '{TaskState.NEW}' "
                    f"ELSE state END, updated_at = {clock.now} "
                    f"WHERE {match} AND state IN ({sources}) RETURNING state, "
                    f"(SELECT d.queue FROM {t.definition} d WHERE d.id = definition_id)",
                    [n, n, n, *values],
                )
                settled.due |= {q for state, q in cursor.fetchall() if state == TaskState.NEW}


def link(children: list[int], parents: list[int], *, using: str) -> list[tuple[int, str]]:
    """Count ``children`` as children of ``parents`` (locking the parents' rows: a parent's
    concurrent final write waits for this transaction, then sees the links) and insert
    the links. Returns each parent's ``(id, state)`` as locked: those already final are
    the caller's to ``settle`` for the new children."""
    connection = connections[using]
    t = Tables(connection)
    states: list[tuple[int, str]] = []
    for piece in chunks(connection, sorted(parents)):
        match, values = in_ids(connection, "id", piece)
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # Locked in id order, as the batched finishes lock their tasks: two
                # writers that lock in one order never wait for each other in a circle.
                cursor.execute(
                    f"WITH locked AS (SELECT id FROM {t.task} WHERE {match} ORDER BY id "
                    f"FOR NO KEY UPDATE) UPDATE {t.task} SET child_count = child_count + %s "
                    f"FROM locked WHERE {t.task}.id = locked.id RETURNING {t.task}.id, state",
                    [*values, len(children)],
                )
            else:  # SQLite: one writer at a time
                cursor.execute(
                    f"UPDATE {t.task} SET child_count = child_count + %s WHERE {match} "
                    "RETURNING id, state",
                    [len(children), *values],
                )
            states += [(row[0], row[1]) for row in cursor.fetchall()]
    rows = [(parent, kid, n) for kid in children for n, parent in enumerate(parents)]
    insert = f"INSERT INTO {t.dependency} (parent_id, child_id, position, settled) "
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":  # one statement for any number of links
            columns = [array_text(column) for column in zip(*rows, strict=True)] if rows else []
            columns = columns or ["{}"] * 3
            cursor.execute(
                f"{insert}SELECT *, FALSE FROM UNNEST(%s::bigint[], %s::bigint[], %s::integer[])",
                columns,
            )
            return states
        for start in range(0, len(rows), 300):
            batch = rows[start : start + 300]
            cursor.execute(
                f"{insert}VALUES " + ", ".join(["(%s, %s, %s, FALSE)"] * len(batch)),
                [v for row in batch for v in row],
            )
    return states


def cancel_descendants(task_id: int, *, using: str) -> Settled:
    """Cancel every blocked descendant of ``task_id`` (whatever its policy), transitively;
    their links from ``task_id``'s side stay to be settled by its own final write."""
    connection = connections[using]
    t, clock = Tables(connection), Clock(connection)
    settled, level = Settled(), [task_id]
    assert TaskState.BLOCKED in WRITES["cancel_waiting"].sources
    sources = states_sql(TaskState.BLOCKED)
    while level:
        found: list[int] = []
        for part in chunks(connection, level):
            match, values = in_ids(connection, "parent_id", part)
            with connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {t.task} SET state = '{TaskState.CANCELLED}', pending_parents = 0, "
                    f"finished_at = {clock.now}, updated_at = {clock.now}"
                    f"{finalize_marks('TRUE', t, clock)} "
                    f"WHERE id IN (SELECT child_id FROM {t.dependency} WHERE {match}) "
                    f"AND state IN ({sources}) RETURNING id, "
                    f"(SELECT d.name FROM {t.definition} d WHERE d.id = definition_id)",
                    values,
                )
                rows = cursor.fetchall()
            found += [row[0] for row in rows]
            settled.ended += [(row[0], row[1]) for row in rows]
        level = found
    return settled
