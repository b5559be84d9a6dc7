"""The agent that lives in each Celery worker's main process, in a thread of its own."""

from __future__ import annotations

import logging
import threading

from django.db import close_old_connections, connection, router

from .conf import get_settings
from .db import close_state_connections, state_db
from .definitions import sync_definitions
from .dispatch import dispatch_queue
from .models import BatchQueue

logger = logging.getLogger(__name__)


class WorkerAgent:
    """Syncs definitions at start, then runs a safety-net dispatch pass for each batch
    queue the worker consumes every ``DISPATCH_INTERVAL`` seconds (finishes and submits
    trigger passes at once; this catches due ``run_after`` tasks and anything missed)."""

    def __init__(self, *, hostname: str, queues: list[str]) -> None:
        self.hostname = hostname
        self.queues = queues
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="batchtasks-agent", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        try:
            self._startup()
            while not self._stop.wait(get_settings().DISPATCH_INTERVAL):
                self.tick()
        finally:
            connection.close()
            close_state_connections()

    def _startup(self) -> None:
        try:
            sync_definitions()
        except Exception:
            logger.exception("batchtasks could not sync definitions worker=%s", self.hostname)
        batch = self._batch_queues()
        if not batch:
            logger.warning(
                "batchtasks worker=%s consumes no batch queue (queues=%s); "
                "`manage.py batchtasks workers` prints the -Q options to use",
                self.hostname,
                ",".join(self.queues),
            )
        self.tick()

    def _batch_queues(self) -> list[str]:
        known = set(BatchQueue.objects.filter(name__in=self.queues).values_list("name", flat=True))
        return [queue for queue in self.queues if queue in known]

    def tick(self) -> None:
        """One round of periodic duties."""
        close_old_connections()
        try:
            using = state_db(router.db_for_write(BatchQueue))
            for queue in self._batch_queues():
                dispatch_queue(queue, using=using)
        except Exception:
            logger.exception("batchtasks dispatch pass failed worker=%s", self.hostname)
