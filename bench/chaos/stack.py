"""The chaos stack's containers, as .ci/docker-chaos started them, and the database the
driver measures with (its own connections, named ``chaos-driver``)."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import psycopg

DRIVER = "chaos-driver"


class Stack:
    """Containers by service name (``CHAOS_CONTAINERS``: ``service=id,...``) and the
    ledger's database (``CHAOS_LEDGER_URL``)."""

    def __init__(self) -> None:
        pairs = (item.split("=", 1) for item in os.environ["CHAOS_CONTAINERS"].split(","))
        self.containers = dict(pairs)
        self.url = os.environ["CHAOS_LEDGER_URL"]
        self.workers = sorted(s for s in self.containers if s.startswith("chaos-"))
        self._db: psycopg.Connection[Any] | None = None

    def docker(self, *args: str, service: str) -> None:
        """``docker ARGS CONTAINER`` for the container of ``service``."""
        subprocess.run(
            ["docker", *args, self.containers[service]],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def logs(self, service: str, since: datetime) -> str:
        """What ``service``'s container wrote to its log (both streams) since ``since``."""
        out = subprocess.run(
            ["docker", "logs", "--since", since.isoformat(), self.containers[service]],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout + out.stderr

    def local_ends(self) -> dict[str, tuple[str, datetime]]:
        """The ends of runs the workers noted on their own hosts, by run token
        (``plugins.chaos.note_end_locally``): outcome and time. A worker that cannot
        be asked (gone) adds none."""
        from plugins.chaos import LOCAL_ENDS  # not at import: it registers task types

        ends: dict[str, tuple[str, datetime]] = {}
        for service in self.workers:
            try:
                text = self.exec(service, "sh", "-c", f"cat {LOCAL_ENDS} 2>/dev/null || true")
            except subprocess.CalledProcessError:
                continue
            ends.update(self.parse_local_ends(text))
        return ends

    @staticmethod
    def parse_local_ends(text: str) -> dict[str, tuple[str, datetime]]:
        """One host's notes of run ends (``local_ends``), by run token."""
        ends: dict[str, tuple[str, datetime]] = {}
        for line in text.splitlines():
            token, outcome, when = line.split()
            ends[token] = (outcome, datetime.fromtimestamp(float(when), UTC))
        return ends

    def exec(self, service: str, *command: str) -> str:
        """``docker exec CONTAINER COMMAND...`` in ``service``'s container; its output."""
        out = subprocess.run(
            ["docker", "exec", self.containers[service], *command],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def network(self, action: str, network: str, *, service: str) -> None:
        """``docker network connect|disconnect`` of ``service``'s container and the
        stack's network ``network`` (``db`` or ``broker``, docker/compose.chaos.yaml)."""
        project = self.inspect(service, '{{index .Config.Labels "com.docker.compose.project"}}')
        self.docker("network", action, f"{project}_{network}", service=service)

    def inspect(self, service: str, template: str) -> str:
        """``docker inspect -f TEMPLATE`` of ``service``'s container."""
        out = subprocess.run(
            ["docker", "inspect", "-f", template, self.containers[service]],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def service_at(self, address: str) -> str | None:
        """The worker service whose container has ``address`` on one of its networks."""
        template = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
        for service in self.workers:
            if address in self.inspect(service, template).split():
                return service
        return None

    def running(self, service: str) -> bool:
        """Whether the container of ``service`` runs (paused counts as running)."""
        out = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Running}}", self.containers[service]],
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.strip() == "true"

    def alive(self, service: str, pid: int) -> bool:
        """Whether process ``pid`` (as the container sees it) still exists in ``service``."""
        out = subprocess.run(
            ["docker", "exec", self.containers[service], "test", "-d", f"/proc/{pid}"],
            capture_output=True,
            check=False,
        )
        return out.returncode == 0

    def db(self, patience: float = 120.0) -> psycopg.Connection[Any]:
        """The driver's connection, opened again (for up to ``patience`` seconds) if it
        broke."""
        deadline = time.monotonic() + patience
        while True:
            try:
                if self._db is None or self._db.closed or self._db.broken:
                    self._db = psycopg.connect(
                        self.url,
                        autocommit=True,
                        connect_timeout=3,
                        application_name=DRIVER,
                        client_encoding="utf8",
                        # The driver writes while the scenarios make the server read-only.
                        options="-c default_transaction_read_only=off",
                    )
                self._db.execute("SELECT 1")
                return self._db
            except psycopg.OperationalError:
                self._db = None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def hold_connections(self, count: int) -> list[psycopg.Connection[Any]]:
        """``count`` idle connections of an outside client (as many as the server gives)."""
        held: list[psycopg.Connection[Any]] = []
        for _ in range(max(count, 0)):
            try:
                held.append(psycopg.connect(self.url, connect_timeout=3, application_name="hog"))
            except psycopg.OperationalError:
                break
        return held

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of ``sql``, retried on a new connection if the old one broke."""
        for _ in range(100):
            try:
                return self.db().execute(sql, args).fetchall()
            except psycopg.OperationalError:
                self._db = None
        raise RuntimeError(f"the ledger's database did not answer {sql!r}")

    def session(self) -> psycopg.Connection[Any]:
        """A connection of an outside client of its own (not in autocommit)."""
        return psycopg.connect(self.url, connect_timeout=3, application_name="chaos-session")

    def dead_tuples(self, table: str) -> int:
        """``n_dead_tup`` of ``table`` (pg_stat_user_tables)."""
        rows = self.query("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = %s", (table,))
        return int(rows[0][0]) if rows else 0

    @property
    def database(self) -> str:
        """The stack's database's name, quoted as an identifier."""
        name = self.query("SELECT quote_ident(current_database())")[0][0]
        return str(name)

    def execute(self, sql: str) -> None:
        """Run ``sql``, which returns no rows (``ALTER SYSTEM``), on the driver's connection."""
        self.db().execute(sql)

    def now(self) -> datetime:
        """The database's clock."""
        value: datetime = self.query("SELECT clock_timestamp()")[0][0]
        return value

    def create_ledger(self) -> None:
        """The ledger's schema and the webhook receiver's table, emptied (in a UTF-8
        database, as an application's is)."""
        encoding = self.query("SHOW server_encoding")[0][0]
        if encoding != "UTF8":
            raise RuntimeError(f"The stack's database is encoded {encoding!r}, not 'UTF8'.")
        from plugins.chaos import SCHEMA  # not at import: it registers task types
        from plugins.soak_receiver import SCHEMA as WEBHOOKS

        self.db().execute(SCHEMA)
        self.db().execute(WEBHOOKS)
        self.db().execute("TRUNCATE chaos.runs, chaos.finals, soak.webhooks")
