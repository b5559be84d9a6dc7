"""kombu's Redis transport, reusing one Redis client per channel.

kombu builds a new ``redis.Redis`` client object for every command it sends outside
the consumer loop: each publish, and the bookkeeping of every delivered message
(``QoS.append`` and ``QoS.ack``). Building one costs ~0.1 ms of CPU with redis-py 8,
which is a good part of what a Celery worker's main process spends per task. A
client is only a handle on the channel's connection pool and is thread-safe, so one
per channel (rebuilt when the pool is) does the same work.

It also keeps the connection parameters a channel's pool was built with. Celery's
worker, on a broken broker connection, collects it (which lets go of the transport: its
``client`` becomes None) and then closes it; a channel whose own close failed during the
collect (a ``BRPOP`` in flight meeting the dead server) is closed then, and gives back
its unacked messages through a new pool, whose parameters kombu reads from that
``client``: ``AttributeError``, which Celery takes for an unrecoverable error, and the
worker exited (seen when Redis restarted under a worker with runs in hand, with gossip,
mingle and heartbeats on). With the kept parameters the messages go back, or the
attempt fails with a connection error, which Celery ignores there.

It leaves kombu's socket timeouts as they are (none): bounded, an ack that timed out
while Redis was stopped left its delivery counted against the prefetch window for good
(kombu's Redis QoS forgets a delivery only once its ack reached Redis), and two of them
stopped a ``-c 2`` worker from taking messages (seen in a soak with ``broker_pause``).

Opt in with ``CELERY_BROKER_TRANSPORT = "batchtasks.transport.redis:Transport"`` beside a
``redis://`` broker URL; everything else is kombu's.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    """A Redis channel that keeps its synchronous client."""

    _kept_client: tuple[Any, Any] | None = None
    #: The connection parameters of the last pools built, by ``asynchronous``.
    _kept_params: dict[bool, dict[str, Any]] | None = None

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        kept = self._kept_params
        if self.connection.client is None and kept and asynchronous in kept:
            return dict(kept[asynchronous])  # the transport was let go of: see the module
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]
        if kept is None:
            kept = self._kept_params = {}
        kept[asynchronous] = dict(params)
        return params

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        pool = self.pool
        kept = self._kept_client
        if kept is None or kept[0] is not pool:
            kept = self._kept_client = (pool, super()._create_client())  # type: ignore[misc]
        return kept[1]


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with ``Channel`` above."""

    Channel = Channel
