"""How a worker's pool processes learn at once that a task they hold was cancelled.

A pool process runs the tasks of a message one after another, and a task cancelled while
it waited there must never start. Reading the flags of the rest of the message before
every start would cost a statement per task; so they are read again only when something
may have changed, which the worker's main process tells its pool processes.

The main process listens on a PostgreSQL channel of its own (``batchtasks_<instance>``,
``db.sql.notice_channel``). A cancel of a running task notifies the channel of the worker
instance running it, in the cancel's own statement (delivered at its commit). The
listener counts what it hears in a small file that the pool processes map into memory
(``<stop folder>/notices``), and a pool process reads the flags again before a start
whenever the count differs from the one it saw at its last read (``seen``): a memory
read per start.

The count is trusted only while the listener proves that it hears: the heartbeat sends a
probe to the channel over its own connection every beat, and a probe not heard for two
beats (a lost connection; or a pooler in transaction mode such as PgBouncer, which does
not carry notifications between its clients) makes ``seen`` answer ``None``, so pool
processes read the flags before every start until probes are heard again. On SQLite,
which has no notifications, that is always so.
"""

from __future__ import annotations

import logging
import mmap
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.db import connections

from ..core.conf import get_settings
from ..db.sql import notice_channel
from . import identity

logger = logging.getLogger(__name__)

#: One 8-byte word, written whole: ``count << 1 | trusted``.
_WORD = struct.Struct("<q")
PROBE = "probe"
_board: tuple[str, mmap.mmap] | None = None


def seen() -> int | None:
    """The listener's count of notices, ``None`` if it cannot be trusted now (pool
    processes: read the flags before every start)."""
    board = _open(write=False)
    if board is None:
        return None
    word = _WORD.unpack_from(board)[0]
    return word >> 1 if word & 1 else None


def probe(instance: str, *, using: str) -> None:
    """Notify ``instance``'s channel of a probe (the heartbeat, every beat)."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [notice_channel(instance), PROBE])


def _open(*, write: bool) -> mmap.mmap | None:
    """This worker boot's notice board, mapped (created by the main process)."""
    global _board
    folder = identity.stop_dir()
    if not folder:
        return None
    if _board is not None and _board[0] == folder:
        return _board[1]
    path = Path(folder, "notices")
    try:
        if write:  # whole from the start: a map beyond a file's end faults
            fresh = path.with_suffix(".new")
            fresh.write_bytes(bytes(_WORD.size))
            fresh.replace(path)
        with path.open("r+b" if write else "rb") as fh:
            access = mmap.ACCESS_WRITE if write else mmap.ACCESS_READ
            _board = (folder, mmap.mmap(fh.fileno(), _WORD.size, access=access))
    except (OSError, ValueError):
        return None
    return _board[1]


class Listener:
    """The main process's listener (see the module text), in a thread of its own."""

    def __init__(self, instance: str, using: str, *, want_probe: Callable[[], None]) -> None:
        self.channel = notice_channel(instance)
        self.using = using
        #: Asks the agent for a probe now (the listener has just begun to listen).
        self._want_probe = want_probe
        self._stop = threading.Event()
        self._count = 0
        self._heard = float("-inf")
        self._trusted = False
        self._board = _open(write=True)
        self._thread = threading.Thread(target=self._loop, name="batchtasks-notices", daemon=True)

    def start(self) -> None:
        if connections[self.using].vendor == "postgresql" and self._board is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        pause = 0.5
        from psycopg import sql

        while not self._stop.is_set():
            try:
                with self._connect() as connection:
                    connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self._want_probe()
                    pause = 0.5
                    self._listen(connection)
            except Exception as exc:  # never let the thread die: distrust and retry
                logger.warning("batchtasks notices not heard (%s); reading flags instead", exc)
            self._heard = float("-inf")
            self._publish()
            self._stop.wait(pause)
            pause = min(pause * 2, 5.0)

    def _listen(self, connection: Any) -> None:
        began, told = time.monotonic(), False
        while not self._stop.is_set():
            for note in connection.notifies(timeout=0.5):
                if note.payload == PROBE:
                    self._heard = time.monotonic()
                else:
                    self._count += 1
                self._publish()
            self._publish()
            if not self._trusted and not told and time.monotonic() - began > self._patience():
                told = True
                logger.warning(
                    "batchtasks hears no probe on channel=%s (a pooler in transaction mode?); "
                    "pool processes read cancel flags before every start instead",
                    self.channel,
                )

    @staticmethod
    def _patience() -> float:
        """How long a probe may go unheard before the board is no longer trusted."""
        return 2 * get_settings().HEARTBEAT_SECONDS + 1

    def _publish(self) -> None:
        trust = time.monotonic() - self._heard <= self._patience()
        if trust and not self._trusted:
            # Whatever was said while it was not heard: every pool process reads again.
            self._count += 1
        self._trusted = trust
        if self._board is not None:
            _WORD.pack_into(self._board, 0, self._count << 1 | int(trust))

    def _connect(self) -> Any:
        import psycopg

        params = connections[self.using].get_connection_params()
        for django_only in ("cursor_factory", "context"):
            params.pop(django_only, None)
        return psycopg.connect(**params, autocommit=True)
