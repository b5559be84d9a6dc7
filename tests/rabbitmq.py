"""The RabbitMQ leg of the suite (``.ci/rabbitmq``): the run's own virtual host, and a
broker "restart" that loses every message waiting in a queue.

``BATCHTASKS_TEST_BROKER=amqp://guest:guest@127.0.0.1:5672`` selects it; tests/settings.py
then points ``BROKER_URL`` at the virtual host ``BATCHTASKS_TEST_VHOST``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit


def in_use() -> bool:
    """Whether this run's broker is RabbitMQ."""
    return bool(os.environ.get("BATCHTASKS_TEST_BROKER"))


def _ctl(*args: str) -> None:
    command = [shutil.which("rabbitmqctl") or "rabbitmqctl", "-q", *args]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


@contextmanager
def own_vhost() -> Iterator[None]:
    """Create the run's virtual host, open to the broker URL's user; delete it after."""
    vhost = os.environ["BATCHTASKS_TEST_VHOST"]
    user = urlsplit(os.environ["BATCHTASKS_TEST_BROKER"]).username or "guest"
    _ctl("add_vhost", vhost)
    try:
        _ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield
    finally:
        _ctl("delete_vhost", vhost)


class EmptiedQueues:
    """The chaos test's broker restart on RabbitMQ: a restarted RabbitMQ keeps durable
    queues and persistent messages, so the loss is made by hand: the queues are deleted
    with every message in them and declared again. Their consumers are cancelled by the
    broker and the workers subscribe again."""

    def __init__(self, queues: list[str]) -> None:
        self.queues = queues

    @property
    def url(self) -> str:
        return os.environ["BROKER_URL"]

    def restart_empty(self, down: float = 0.0) -> None:
        """The queues deleted and declared again: emptied at once (``down``, how long a
        restarted Redis stays down, has no match here)."""
        from project.celery import app

        del down

        with app.connection_for_write() as connection:
            channel = connection.default_channel
            for name in self.queues:
                queue = app.amqp.queues[name].bind(channel)
                assert queue.delete() is not None, f"{name} existed, with its messages"
                queue.declare()
