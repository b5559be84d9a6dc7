"""Worker connections notice a server they can no longer reach (``WORKER_KEEPALIVES``)."""

from __future__ import annotations

import copy

import psycopg
import pytest
from django.db import connection, connections

from batchtasks.db.connections import add_keepalives, keepalive_options


def test_the_options_follow_the_lease() -> None:
    assert keepalive_options(30) == {
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": 10000,
        "connect_timeout": 5,
    }
    short = keepalive_options(6)  # never below what libpq and the kernel take
    assert (short["keepalives_idle"], short["tcp_user_timeout"], short["connect_timeout"]) == (
        1,
        3000,
        2,
    )


@pytest.mark.django_db
def test_a_worker_adds_them_where_the_project_set_none_of_its_own() -> None:
    settings_dict = connections.settings["default"]
    saved = copy.deepcopy(settings_dict.get("OPTIONS", {}))
    try:
        settings_dict.setdefault("OPTIONS", {})["keepalives_idle"] = 60
        add_keepalives(30)
        options = settings_dict["OPTIONS"]
        assert options["keepalives_idle"] == 60  # the project's own
        assert (options["keepalives"], options["tcp_user_timeout"]) == (1, 10000)
        # libpq takes them: a connection made with them works and carries them.
        params = connection.get_connection_params()
        with psycopg.connect(**params) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            sent = conn.info.get_parameters()
        assert (sent["keepalives_idle"], sent["tcp_user_timeout"]) == ("60", "10000")
    finally:
        settings_dict["OPTIONS"] = saved
