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
