"""The PgBouncer leg of the suite (``.ci/pgbouncer``): every connection of the run goes
through a PgBouncer in transaction pooling mode.

``BATCHTASKS_TEST_PGBOUNCER=127.0.0.1:6433`` says so; ``DATABASE_URL`` then names it.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg


def in_use() -> bool:
    """Whether this run's connections go through PgBouncer."""
    return bool(os.environ.get("BATCHTASKS_TEST_PGBOUNCER"))


def close_server_connections(settings_dict: dict[str, Any]) -> None:
    """End PgBouncer's server connections to the test database, which it keeps open in
    its pool after every client has gone: PostgreSQL drops no database that has
    sessions. Through PgBouncer too, from its ``postgres`` database."""
    s = settings_dict
    with psycopg.connect(
        host=s["HOST"], port=s["PORT"], user=s["USER"], dbname="postgres", autocommit=True
    ) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            [s["NAME"]],
        )
