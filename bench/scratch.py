"""A scratch PostgreSQL database per benchmark run, dropped afterwards."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def scratch_database(purpose: str, *, keep: bool = False) -> Iterator[str]:
    """A database of this run's own (named after ``purpose`` and the pid), dropped
    afterwards even when the bench fails, unless ``keep``; yields its URL."""
    import psycopg

    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/batchtasks")
    base, name = url.split("?")[0].rsplit("/", 1)
    scratch = f"{name}_{purpose}_{os.getpid()}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{scratch}"')
    try:
        yield f"{base}/{scratch}"
    finally:
        from django.db import connections

        connections.close_all()
        if keep:
            print(f"kept the database {scratch!r}; drop it yourself")
        else:
            with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')


def copy_task(template_id: int, copies: int, made: dict[str, str], *, vacuum: bool = False) -> None:
    """``copies`` rows of the task ``template_id`` in its place (it is deleted), each
    column as the template's but those in ``made``: SQL over ``g``, the copy's number
    (1…``copies``); then the table is analyzed (vacuumed first, with ``vacuum``)."""
    from django.db import connection

    from batchtasks import BatchTask

    quote = connection.ops.quote_name
    fields = [f.column for f in BatchTask._meta.concrete_fields if not f.primary_key]
    select = ", ".join(made.get(c, quote(c)) for c in fields)
    table = quote(BatchTask._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({', '.join(map(quote, fields))}) SELECT {select} "
            f"FROM {table} t CROSS JOIN generate_series(1, %s) g WHERE t.id = %s",
            [copies, template_id],
        )
        cursor.execute(f"DELETE FROM {table} WHERE id = %s", [template_id])
        cursor.execute(f"{'VACUUM ' if vacuum else ''}ANALYZE {table}")
