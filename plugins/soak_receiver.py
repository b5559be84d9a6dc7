"""The soak's webhook receiver (``python -m plugins.soak_receiver``, a container of
docker/compose.soak.yaml): it answers every POST at once with 204 and records it in
``soak.webhooks`` of the ledger's database (``CHAOS_LEDGER_URL``) from a thread, so
that a PostgreSQL restart delays the record, not the answer (a late answer would be a
retried delivery, which is the engine's to avoid, not the receiver's to cause).

It checks nothing itself: the driver (``bench/soak``) counts the calls per outcome
(``id`` and ``attempt`` of the body) and whether the signature was right."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS soak;
CREATE TABLE IF NOT EXISTS soak.webhooks (
    id bigserial PRIMARY KEY,
    task_id bigint,
    attempt int,
    state text,
    signed boolean NOT NULL,
    at timestamptz NOT NULL,
    body text NOT NULL
);
"""
calls: queue.Queue[tuple[Any, ...]] = queue.Queue()


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        secret = os.environ.get("BATCHTASKS_WEBHOOK_SECRET", "").encode()
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        signed = hmac.compare_digest(expected, self.headers.get("X-Batchtasks-Signature", ""))
        self.send_response(204)
        self.end_headers()
        try:
            data = json.loads(body)
        except ValueError:
            data = {}
        calls.put(
            (
                data.get("id"),
                data.get("attempt"),
                data.get("state"),
                signed,
                datetime.now(UTC),
                body.decode("utf-8", "replace"),
            )
        )

    def log_message(self, format: str, *args: Any) -> None:
        return


def record() -> None:
    """Write the calls in order, on a connection opened again whenever it broke."""
    db = None
    while True:
        call = calls.get()
        while True:
            try:
                if db is None or db.closed:
                    db = psycopg.connect(
                        os.environ["CHAOS_LEDGER_URL"], autocommit=True, connect_timeout=5
                    )
                db.execute(
                    "INSERT INTO soak.webhooks (task_id, attempt, state, signed, at, body) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    call,
                )
                break
            except psycopg.OperationalError:
                db = None
                time.sleep(0.5)


def main() -> None:
    threading.Thread(target=record, daemon=True).start()
    ThreadingHTTPServer(("0.0.0.0", 8080), Receiver).serve_forever()


if __name__ == "__main__":
    main()
