"""Stopping and restarting Celery's consumer of a worker's batch queues from another
thread (the agent's, while the database is out of reach: ``WorkerAgent.check_reach``).

Celery's consumer may be changed only from its own event loop, so a change is a callback
for the loop (``consumer.call_soon``). kombu's hub keeps those in a set and runs them in no
particular order: a pause and the resume right behind it, both asked while the loop was
busy (its publish waiting out a broker partition), once ran resume first, then pause, and
the worker took no message of its batch queues again while alive and connected. So a
callback here carries no order: it reads what is wanted when it runs and does what is
missing, and the agent asks again while what it wanted last is not done (the loop had
no consumer to change: Celery was rebuilding it after a lost connection).

Only the queues a pause stopped are started again, so a queue an operator stopped
(``celery control cancel_consumer``) stays stopped. A stopped queue is also taken out of
Celery's selection, as Celery's own cancel does, so a reconnect during the pause does not
consume it either.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class ConsumerPause:
    """See the module text. ``want`` and ``ask_again`` are called from any thread;
    ``apply`` runs in the consumer's loop."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        #: Whether the batch queues should not be consumed.
        self.paused = False
        self._queues: list[str] = []
        #: Queues this pause stopped (consumer's loop only).
        self._stopped: set[str] = set()
        self._lock = threading.Lock()
        self._wish = 0
        self._done = 0
        self._asked_at = float("-inf")

    def want(self, paused: bool, queues: list[str]) -> None:
        """Pause (or resume) consuming ``queues`` as soon as the consumer's loop can."""
        with self._lock:
            self.paused = paused
            self._queues = list(queues)
            self._wish += 1
        self._ask()

    def ask_again(self, wait: float) -> None:
        """Ask the loop again if the last wish has waited ``wait`` seconds undone."""
        with self._lock:
            pending = self._done != self._wish
            stale = time.monotonic() - self._asked_at >= wait
        if pending and stale:
            self._ask()

    def _ask(self) -> None:
        self._asked_at = time.monotonic()
        self.consumer.call_soon(self.apply)

    def apply(self) -> None:
        """Make Celery's consumer what was wanted last (its loop's thread)."""
        with self._lock:
            wish, paused, queues = self._wish, self.paused, list(self._queues)
        consumer = self.consumer
        task_consumer = getattr(consumer, "task_consumer", None)
        if task_consumer is None:  # being rebuilt after a lost connection: asked again
            return
        if paused:
            for queue in queues:
                if task_consumer.consuming_from(queue):
                    consumer.cancel_task_queue(queue)
                    self._stopped.add(queue)
        else:
            for queue in sorted(self._stopped):
                if not task_consumer.consuming_from(queue):
                    consumer.add_task_queue(queue)
            self._stopped.clear()
        with self._lock:
            self._done = max(self._done, wish)
