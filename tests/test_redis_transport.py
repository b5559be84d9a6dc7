"""The batchtasks Redis transport (``batchtasks.transport.redis``) against the real
Redis: what it changes of kombu's, and a failure of kombu's it must not share."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from celery import Celery
from kombu import Connection

from batchtasks.transport import publish
from batchtasks.transport.publish import Run
from batchtasks.transport.redis import Transport
from tests.netfault import proxied


@pytest.fixture
def url() -> Iterator[str]:
    yield os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def connect(url: str, prefix: str) -> Connection:
    return Connection(url, transport=Transport, transport_options={"global_keyprefix": prefix})


def test_a_channel_keeps_one_client_per_pool(url: str) -> None:
    conn = connect(url, f"batchtasks-test-{uuid.uuid4().hex}:")
    channel = conn.default_channel
    with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
        assert first is second
    conn.close()


def test_a_channel_closed_after_its_transport_was_let_go_of_gives_its_messages_back(
    url: str,
) -> None:
    """Celery's worker, on a broken broker connection, collects it (which lets go of the
    transport: ``transport.client`` is None) and then closes it; a channel whose own close
    failed during the collect (its BRPOP in flight met the dead server) is closed then,
    and gives its unacked messages back: with kombu's connection parameters read from the
    transport, that raised AttributeError, which Celery takes for an unrecoverable error:
    the worker exited."""
    prefix = f"batchtasks-test-{uuid.uuid4().hex}:"
    queue = "restore"
    conn = connect(url, prefix)
    channel = conn.default_channel
    channel.queue_declare(queue)
    channel.basic_publish(channel.prepare_message("run me"), exchange="", routing_key=queue)
    assert channel.basic_get(queue, no_ack=False) is not None  # delivered, not acked
    assert channel._size(queue) == 0

    conn._do_close_transport()  # the last step of Connection.collect()
    conn.close()  # raised AttributeError: 'NoneType' object has no attribute 'hostname'

    check = connect(url, prefix)
    try:
        assert check.default_channel._size(queue) == 1, "given back to its queue"
    finally:
        check.default_channel.queue_delete(queue)
        check.close()


def test_after_a_publish_failed_to_reach_the_broker_the_next_ones_fail_at_once(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publish that cannot reach the broker fails after the transport's timeouts; the
    worker agent's database thread publishes once per queue in a pass, so its lease
    renewals would wait for all of them. After one publish failed to reach the broker,
    publishes in this process fail at once for ``UNREACHABLE_SECONDS`` (their runs go
    back to ``new``), then try again."""
    target = urlsplit(url)
    with proxied((target.hostname or "127.0.0.1", target.port or 6379)) as proxy:
        app = Celery(
            "unreachable-test",
            broker=f"redis://127.0.0.1:{proxy.port}{target.path}",
            broker_transport=Transport,
            # A socket timeout of its own: without one a publish through the cut waits.
            broker_transport_options={
                "global_keyprefix": f"test-{uuid.uuid4().hex}:",
                "socket_timeout": 2.0,
            },
            set_as_current=False,
        )
        runs = [Run(1, 1)]
        monkeypatch.setattr(publish, "UNREACHABLE_SECONDS", 1.0)
        publish.publish("q", runs, app=app)
        proxy.cut()
        with pytest.raises(app.connection_for_write().connection_errors) as first:
            publish.publish("q", runs, app=app)
        assert not isinstance(first.value, publish.BrokerUnreachable)
        with pytest.raises(publish.BrokerUnreachable):
            publish.publish("q", runs, app=app)
        proxy.sever()  # the route is back
        time.sleep(1.0)
        publish.publish("q", runs, app=app)  # the first after the window tries again
        publish.publish("q", runs, app=app)
        with app.connection_for_read() as conn:
            assert conn.default_channel._size("q") == 3
        app.close()
