"""Bulk inserts for ``submit_many``: on PostgreSQL rows built by the server and
parameters by ``COPY``, else Django's ``bulk_create``.

The tasks of one ``submit_many`` share every column but their id, their fair turn and
whether they are queued, so the server builds them from one row per state: one statement
takes their ids, inserts them and returns the ids. ``bulk_create`` spent ~0.2 ms a task
building SQL; ``COPY`` of the parameters needs about a microsecond a row.
"""

from __future__ import annotations

from typing import Any

from django.db import connections

from ..core.codecs import Encoded
from ..db import prepared
from ..db.sql import param_type
from ..models import BatchTask, BatchTaskParameters

BULK_BATCH_SIZE = 1000


def insert_tasks(tasks: list[BatchTask], encoded: list[Encoded], *, using: str) -> None:
    """Insert ``tasks`` and their parameters; set their pks. The tasks are all alike but
    for ``fair_round`` and being queued (the first ones) or not."""
    connection = connections[using]
    if connection.vendor == "postgresql" and hasattr(_raw_cursor(connection), "copy"):
        _insert_many(tasks, encoded, using)
        return
    BatchTask.objects.using(using).bulk_create(tasks, batch_size=BULK_BATCH_SIZE)
    BatchTaskParameters.objects.using(using).bulk_create(
        [
            BatchTaskParameters(task=t, data=e.data, codec=e.codec, size=e.size)
            for t, e in zip(tasks, encoded, strict=True)
        ],
        batch_size=BULK_BATCH_SIZE,
    )


def insert_task(task: BatchTask, encoded: Encoded, *, using: str) -> None:
    """Insert one task and its parameters (one round trip on PostgreSQL); set its pk
    unless it has one (taken before, ``services.deferred``)."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        task.save(using=using, force_insert=True)
        BatchTaskParameters(
            task=task, data=encoded.data, codec=encoded.codec, size=encoded.size
        ).save(using=using, force_insert=True)
        return
    quote = connection.ops.quote_name
    given = task.pk is not None
    fields = [f for f in BatchTask._meta.concrete_fields if given or not f.primary_key]
    values = [
        task.pk if f.primary_key else v
        for f, v in zip(fields, _row(task, fields, connection), strict=True)
    ]
    sql = (
        f"WITH task AS (INSERT INTO {quote(BatchTask._meta.db_table)} "
        f"({', '.join(quote(f.column) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))}) RETURNING id) "
        f"INSERT INTO {quote(BatchTaskParameters._meta.db_table)} (task_id, data, codec, size) "
        "SELECT id, %s, %s, %s FROM task RETURNING task_id"
    )
    with connection.cursor() as cursor:
        prepared.execute(
            cursor,
            "insert_with_id" if given else "insert",
            sql,
            [*values, encoded.data, encoded.codec, encoded.size],
        )
        task.pk = cursor.fetchone()[0]
    task._state.adding = False
    task._state.db = using


def _raw_cursor(connection: Any) -> Any:
    with connection.cursor() as cursor:
        return cursor.cursor


def _insert_many(tasks: list[BatchTask], encoded: list[Encoded], using: str) -> None:
    connection = connections[using]
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(*_insert_tasks_sql(tasks, connection))
        ids = [row[0] for row in cursor.fetchall()]
        params_table = quote(BatchTaskParameters._meta.db_table)
        with cursor.cursor.copy(
            f"COPY {params_table} (task_id, data, codec, size) FROM STDIN"
        ) as copy:
            for pk, enc in zip(ids, encoded, strict=True):
                copy.write_row((pk, enc.data, enc.codec, enc.size))
    for task, pk in zip(tasks, ids, strict=True):
        task.pk = pk
        task._state.adding = False
        task._state.db = using


def _insert_tasks_sql(tasks: list[BatchTask], connection: Any) -> tuple[str, list[Any]]:
    """One statement that takes the tasks' ids from the sequence, inserts the tasks and
    returns the ids in the tasks' order. The server builds the rows: each run of tasks
    in one state is its first task with other ids and fair turns. Sending every row
    (``COPY``) cost ~5 microseconds a row of Python, a fifth of a ``submit_many``."""
    quote = connection.ops.quote_name
    meta = BatchTask._meta
    table = meta.db_table
    fields = [f for f in meta.concrete_fields if f.attname not in ("id", "fair_round")]
    columns = ", ".join(quote(f.column) for f in (meta.pk, meta.get_field("fair_round"), *fields))
    casts = ", ".join(f"CAST(%s AS {param_type(f, connection)})" for f in fields)
    params: list[Any] = [table, [task.fair_round for task in tasks]]
    inserts = []
    for n, (start, end) in enumerate(_runs(tasks)):
        inserts.append(
            f"i{n} AS (INSERT INTO {quote(table)} ({columns}) "
            f"SELECT id, turn, {casts} FROM u WHERE ord > %s AND ord <= %s)"
        )
        params += [*_row(tasks[start], fields, connection), start, end]
    sql = (
        "WITH u AS MATERIALIZED (SELECT nextval(pg_get_serial_sequence(%s, 'id')) AS id, "
        "turn, ord FROM unnest(%s::bigint[]) WITH ORDINALITY AS x(turn, ord)), "
        f"{', '.join(inserts)} SELECT id FROM u ORDER BY ord"
    )
    return sql, params


def _runs(tasks: list[BatchTask]) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of consecutive tasks in the same state."""
    runs, start = [], 0
    for i in range(1, len(tasks) + 1):
        if i == len(tasks) or tasks[i].state != tasks[start].state:
            runs.append((start, i))
            start = i
    return runs


def _row(task: BatchTask, fields: Any, connection: Any) -> list[Any]:
    """Database values of every column of ``task`` (``pre_save`` fills ``created_at``)."""
    values = []
    for field in fields:
        value = field.pre_save(task, add=True)
        values.append(None if field.primary_key else field.get_db_prep_save(value, connection))
    return values
