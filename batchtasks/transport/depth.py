"""How many messages wait in a broker queue, on any kombu transport.

On AMQP (RabbitMQ) a passive ``queue.declare`` answers with the broker's own count of
the queue's ready messages. kombu's virtual transports (Redis, the filesystem) count
their own storage: on Redis the length of the queue's lists, under the key prefix (their
passive declare is not used: kombu 5.7 checks a prefixed queue's existence without its
prefix). Messages delivered to a worker and not yet acked are not counted on either.
"""

from __future__ import annotations

import contextlib
from typing import Any

from celery import current_app
from kombu.transport import virtual


def queue_depth(queue: str, *, app: Any = None) -> int:
    """The number of messages waiting in ``queue``; 0 if the broker has no such queue."""
    app = app or current_app
    with app.connection_for_read() as connection:
        channel = connection.channel()
        if isinstance(channel, virtual.Channel):
            return int(channel._size(queue))
        try:
            return int(channel.queue_declare(queue, passive=True).message_count)
        except connection.channel_errors:  # NOT_FOUND: no queue, so nothing waits in it
            return 0
        finally:
            # A refused passive declare has closed the channel already.
            with contextlib.suppress(*connection.channel_errors, *connection.connection_errors):
                channel.close()
