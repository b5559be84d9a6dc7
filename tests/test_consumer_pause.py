"""The agent's pause of Celery's consumer of the batch queues while the database is out of
reach (``WorkerAgent.check_reach``), against Celery's own queue methods on a real kombu
consumer of the real Redis.

Celery's consumer is changed only from its event loop: the agent asks with
``consumer.call_soon``, and kombu's hub keeps those callbacks in a set and runs them in no
particular order. A pause and the resume right behind it, both asked while the loop was
busy (its publish waiting out a broker partition), could run resume first: the worker
then stayed alive and connected and took no message of its batch queues again (the
chaos suite's broker_partition)."""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
from celery import Celery
from celery.worker.consumer.consumer import Consumer as CeleryConsumer

from batchtasks.services.workers import Identity
from batchtasks.worker import agent as agent_module
from batchtasks.worker.agent import WorkerAgent

pytestmark = pytest.mark.django_db

QUEUES = ["batchtasks.one", "batchtasks.two"]


class LoopConsumer:
    """Celery's worker consumer as far as the pause touches it: Celery's own queue methods
    on a real kombu consumer; ``call_soon`` collects callbacks as kombu's hub does (a set:
    in no order), and the test runs them in the order it chooses."""

    add_task_queue = CeleryConsumer.add_task_queue
    cancel_task_queue = CeleryConsumer.cancel_task_queue

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.connection = app.connection_for_read()
        self.app.amqp.queues.select(QUEUES)
        self.task_consumer: Any = app.amqp.TaskConsumer(self.connection)
        self.task_consumer.consume()
        self.ready: list[Callable[[], Any]] = []

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self.ready.append(partial(fn, *args))

    def run(self, order: tuple[int, ...]) -> None:
        ready, self.ready = self.ready, []
        for i in order:
            ready[i]()

    def consuming(self) -> list[str]:
        return [queue for queue in QUEUES if self.task_consumer.consuming_from(queue)]


@pytest.fixture
def app() -> Iterator[Celery]:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    app = Celery(
        "pause-test",
        broker=url,
        set_as_current=False,
        broker_transport_options={"global_keyprefix": f"batchtasks-test-{uuid.uuid4().hex}:"},
        task_create_missing_queues=True,
    )
    app.conf.task_queues = None
    yield app
    app.close()


class Clock:
    """What ``running.horizon`` reads: until when the last answered renewal holds."""

    def __init__(self) -> None:
        self.horizon = time.monotonic() + 30.0

    def out_of_reach(self) -> None:
        self.horizon = time.monotonic() - 60.0

    def reached(self) -> None:
        self.horizon = time.monotonic() + 30.0


def make_agent(consumer: LoopConsumer, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Clock]:
    clock = Clock()
    monkeypatch.setattr(agent_module.running, "horizon", lambda: clock.horizon)
    identity = Identity(
        name="pause@test",
        instance=uuid.uuid4().hex,
        pid=os.getpid(),
        process_space="",
        process_started=time.time(),
    )
    agent = WorkerAgent(identity, queues=list(QUEUES), consumer=consumer)
    agent.batch_queues = list(QUEUES)
    return agent, clock


@pytest.mark.parametrize("order", ["asked", "reversed"])
def test_a_pause_and_the_resume_behind_it_leave_the_queues_consumed_in_either_order(
    app: Celery, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    consumer = LoopConsumer(app)
    agent, clock = make_agent(consumer, monkeypatch)
    clock.out_of_reach()
    agent.check_reach()
    clock.reached()
    agent.check_reach()
    assert consumer.ready, "the agent asked the consumer's loop for nothing"
    n = len(consumer.ready)
    consumer.run(tuple(range(n)) if order == "asked" else tuple(reversed(range(n))))
    consumer.run(tuple(range(len(consumer.ready))))  # whatever the first ones asked for
    assert consumer.consuming() == QUEUES
    assert set(QUEUES) <= set(app.amqp.queues.consume_from)  # a reconnect consumes them too


def test_every_order_of_the_loops_callbacks_ends_as_the_last_wish(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out, in, out again, all asked while the loop was busy: paused at the end."""
    consumer = LoopConsumer(app)
    agent, clock = make_agent(consumer, monkeypatch)
    for wish in (clock.out_of_reach, clock.reached, clock.out_of_reach):
        wish()
        agent.check_reach()
    pending = list(consumer.ready)
    for order in itertools.permutations(range(len(pending))):
        consumer.ready = list(pending)
        consumer.run(order)
        consumer.run(tuple(range(len(consumer.ready))))
        assert consumer.consuming() == [], order
    clock.reached()
    agent.check_reach()
    consumer.run(tuple(range(len(consumer.ready))))
    assert consumer.consuming() == QUEUES


def test_a_wish_the_loop_could_not_apply_is_asked_again(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While Celery rebuilds its consumer after a lost connection it has none: the
    callback does nothing then, and the agent asks again until it is done."""
    consumer = LoopConsumer(app)
    agent, clock = make_agent(consumer, monkeypatch)
    clock.out_of_reach()
    agent.check_reach()
    task_consumer, consumer.task_consumer = consumer.task_consumer, None
    consumer.run(tuple(range(len(consumer.ready))))
    consumer.task_consumer = task_consumer
    monkeypatch.setattr(agent_module, "ASK_AGAIN_SECONDS", 0.0)
    agent.check_reach()
    consumer.run(tuple(range(len(consumer.ready))))
    assert consumer.consuming() == []


def test_a_queue_the_pause_did_not_stop_is_not_started_by_the_resume(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's ``celery control cancel_consumer`` before the outage stays."""
    consumer = LoopConsumer(app)
    consumer.cancel_task_queue(QUEUES[1])
    agent, clock = make_agent(consumer, monkeypatch)
    clock.out_of_reach()
    agent.check_reach()
    consumer.run(tuple(range(len(consumer.ready))))
    assert consumer.consuming() == []
    clock.reached()
    agent.check_reach()
    consumer.run(tuple(range(len(consumer.ready))))
    assert consumer.consuming() == [QUEUES[0]]
