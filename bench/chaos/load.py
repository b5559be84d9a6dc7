"""The steady load: a thread that keeps ``backlog`` submitted tasks unfinished (it tops
up as the ledger's final outcomes come in), submitting through ``BatchTask.submit`` as
an application would. While PostgreSQL or Redis is away it keeps trying."""

from __future__ import annotations

import logging
import threading
import time

from django.db import close_old_connections, connections

from .stack import Stack

logger = logging.getLogger("bench.chaos")


class Load(threading.Thread):
    """Submit ``chaos.work`` tasks (or of ``type_name``) of ``seconds`` each, ``backlog``
    ahead of the finals."""

    def __init__(
        self,
        stack: Stack,
        *,
        backlog: int,
        seconds: float,
        priority: int | None = None,
        type_name: str = "chaos.work",
    ) -> None:
        super().__init__(name="chaos-load", daemon=True)
        self.stack, self.backlog, self.seconds = stack, backlog, seconds
        self.priority, self.type_name = priority, type_name
        self.submitted: list[int] = []
        self.errors = 0
        self._halt = threading.Event()

    def stop(self) -> list[int]:
        """Stop submitting; the ids submitted."""
        self._halt.set()
        self.join(timeout=60)
        return list(self.submitted)

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                missing = self.backlog - self._outstanding()
                for _ in range(max(missing, 0)):
                    if self._halt.is_set() or not self._submit():
                        break
                self._halt.wait(0.1)
        finally:
            connections.close_all()

    def _outstanding(self) -> int:
        if not self.submitted:
            return 0
        try:
            done = self.stack.query(  # its own only: another load may run beside it
                "SELECT count(DISTINCT task_id) FROM chaos.finals WHERE task_id = ANY(%s)",
                (self.submitted,),
            )[0][0]
        except RuntimeError:
            return self.backlog
        return len(self.submitted) - int(done)

    def _submit(self) -> bool:
        from batchtasks import BatchTask

        try:
            task = BatchTask.submit(
                self.type_name, {"seconds": self.seconds}, priority=self.priority
            )
        except Exception as exc:  # any fault of the stack: try again later
            self.errors += 1
            logger.debug("submit failed: %r", exc)
            close_old_connections()
            for conn in connections.all():
                conn.close()
            time.sleep(0.5)
            return False
        self.submitted.append(int(task.pk))
        return True
