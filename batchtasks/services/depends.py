"""``depends_on``: check a child's parents, link it to them, and act on what settling
children did (dispatch the queues of children made due, tell the app of those ended)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from typing import Any

from django.db import OperationalError, connections, transaction
from django.utils.translation import gettext as _

from .. import transitions
from ..core.exceptions import InvalidTaskOption
from ..core.states import FINAL_STATES, TaskState
from ..db.sql import Tables
from ..models import BatchTask
from ..transitions.dependents import chunks, in_ids
from . import events
from .dispatch import dispatch_on_commit

ON_PARENT_FAILURE = ("skip", "run")


def check_policy(on_parent_failure: Any) -> str:
    """``on_parent_failure``, checked."""
    if on_parent_failure not in ON_PARENT_FAILURE:
        raise InvalidTaskOption(
            f"on_parent_failure={on_parent_failure!r} must be one of {ON_PARENT_FAILURE}: "
            "'skip' skips the task if a parent fails, is cancelled or skipped; 'run' runs it "
            "once every parent is final, whatever their outcome."
        )
    return str(on_parent_failure)


def _check_shape(depends_on: Iterable[Any]) -> None:
    if isinstance(depends_on, BatchTask | int | str | bytes | dict):
        raise InvalidTaskOption(
            "depends_on takes a list of tasks or task ids, not a single "
            f"{type(depends_on).__name__}; write depends_on=[task]."
        )


def later(depends_on: Iterable[Any]) -> list[Any]:
    """``depends_on`` as a list, its shape checked: the rest is checked when the task is
    inserted after the application's transaction (its parents may be inserted just
    before it, ``services.deferred``)."""
    _check_shape(depends_on)
    return list(depends_on)


def parent_ids(depends_on: Iterable[Any] | None, db: str) -> list[int]:
    """The ids of ``depends_on`` (tasks or ids), in order without repeats, each an
    existing task of database ``db``; ``InvalidTaskOption`` otherwise."""
    if depends_on is None:
        return []
    _check_shape(depends_on)
    ids: dict[int, None] = {}
    for item in depends_on:
        if isinstance(item, BatchTask):
            if item.pk is None:
                raise InvalidTaskOption("depends_on holds a task that was never saved.")
            if item._state.db not in (None, db):
                raise InvalidTaskOption(
                    f"depends_on holds task {item.pk} of database {item._state.db!r}; a task "
                    f"and its parents must be in the same database ({db!r})."
                )
            ids[item.pk] = None
        elif isinstance(item, int) and not isinstance(item, bool):
            ids[item] = None
        else:
            raise InvalidTaskOption(
                f"depends_on holds {item!r}; give BatchTask objects or their integer ids."
            )
    _check_exist(list(ids), db)
    return list(ids)


def _check_exist(ids: list[int], db: str) -> None:
    connection = connections[db]
    t, found = Tables(connection), set()
    for part in chunks(connection, ids):
        match, values = in_ids(connection, "id", part)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT id FROM {t.task} WHERE {match}", values)
            found |= {row[0] for row in cursor.fetchall()}
    missing(ids, found)


def missing(ids: list[int], found: set[int]) -> None:
    """``InvalidTaskOption`` naming the ids of ``ids`` not in ``found``."""
    absent = [pk for pk in ids if pk not in found]
    if absent:
        shown = ", ".join(str(pk) for pk in absent[:10]) + (" …" if len(absent) > 10 else "")
        raise InvalidTaskOption(
            _(
                "depends_on names tasks that do not exist (or were purged): %(ids)s. A task "
                "may only depend on tasks submitted before it."
            )
            % {"ids": shown}
        )


def attach(children: list[int], parents: list[int], db: str) -> transitions.Settled:
    """Link ``children`` (inserted ``blocked``, waiting for every parent) to ``parents``
    and count the parents already final, in the caller's transaction."""
    states = _link(children, parents, db)
    missing(parents, {pk for pk, _ in states})
    final = [(pk, state) for pk, state in states if state in FINAL_STATES]
    return transitions.settle(final, using=db) if final else transitions.Settled()


#: Times a child's submit takes its parents' locks before a deadlock fails it.
LINK_TRIES = 5


def _link(children: list[int], parents: list[int], db: str) -> list[tuple[int, str]]:
    """``transitions.link`` in a savepoint, taken again when PostgreSQL ends it to break a
    deadlock: the link locks its parents in id order, as the engine's batched writes lock
    theirs, but a writer that locks several tasks in another order (a countdown of
    children, a dispatch) can still close a circle with it, and the submit is the caller's
    to keep, not to fail."""
    for attempt in range(1, LINK_TRIES):
        try:
            with transaction.atomic(using=db):
                return transitions.link(children, parents, using=db)
        except OperationalError as error:
            if getattr(error.__cause__, "sqlstate", "") != "40P01":
                raise
            time.sleep(random.uniform(0, 0.05 * attempt))  # the other side goes first
    with transaction.atomic(using=db):
        return transitions.link(children, parents, using=db)


def act_on(settled: transitions.Settled | None, db: str) -> None:
    """After the write that settled children: dispatch the queues of those made due (at
    commit), and send ``task_finished`` for those it ended."""
    if settled is None:
        return
    for queue in settled.due:
        dispatch_on_commit(queue, using=db)
    if settled.ended:
        events.finished_many(settled.ended, using=db)


def blocked(task: BatchTask, parents: list[int], on_parent_failure: str) -> None:
    """Make a task about to be inserted wait for ``parents``."""
    task.state, task.queue, task.queued_at = TaskState.BLOCKED, "", None
    task.pending_parents = len(parents)
    task.on_parent_failure = on_parent_failure
