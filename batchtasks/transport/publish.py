"""Publishing run messages: a batch in one Redis round trip, or Celery's ``send_task``.

Each message is an ordinary Celery protocol-2 message for ``batchtasks.run`` whose
arguments are the task id and the attempt it is for (a claim check: the parameters stay
in the database, and a message for any other attempt runs nothing). With kombu's Redis
transport a whole batch is pushed through one pipeline: ``apply_async`` costs ~0.8 ms a
message here, most of it in building a Redis client per call. The batch path is used
only when nothing listens to Celery's publish signals (tracing tools do), and falls back
to one ``send_task`` per message if the transport does not look as expected.

Time limits: a message of a type that runs in a child process or an executor carries
its type's limits for Celery, which enforces them per message (the run's supervisor
acts on them). The worker's agent enforces those of inline types per task
(``worker.timelimits``), so their messages, which may carry several tasks, carry only
an outer hard limit for Celery, a safety net should the agent fail: the sum of the
tasks' ``timeout``, plus ``KILL_GRACE`` per task, plus ``OUTER_LIMIT_GRACE`` seconds
(``celery_limits``); no Celery soft limit, and none at all for a type without a hard
``timeout``.

A publish that cannot reach the broker fails (its runs go back to ``new``: the caller's
``dispatch.publish_or_unqueue``); then every publish in this process fails at once for
``UNREACHABLE_SECONDS`` with ``BrokerUnreachable`` rather than try the broker again (a
try may wait on a connection that is going nowhere): the worker agent's database thread
publishes once per queue in a pass, and its lease renewals must not wait for each.

Every path to the broker ends in ``publish``. While ``redirected(receiver)`` is active,
``receiver(queue, runs)`` gets the runs instead of the broker: the test helpers
(``batchtasks.testing``) run them in the test's process, or hold them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from celery import current_app, signals
from kombu.utils.json import dumps

from ..core.conf import get_settings

try:
    from kombu.transport.redis import Channel as RedisChannel
except ImportError:  # the redis client library is not installed
    RedisChannel = None  # type: ignore[assignment, misc]

logger = logging.getLogger(__name__)

RUN_TASK_NAME = "batchtasks.run"
#: The task of a message that carries several attempts of one type, run one by one.
RUN_MANY_TASK_NAME = "batchtasks.run_many"
CONTENT_TYPE = "application/json"
#: The header of a message the worker acks when a pool process takes it, not after its
#: runs (``worker.request``): its runs are short, so the worker's next message waits for
#: little while held behind them.
ACK_HEADER = "batchtasks_ack"
ACK_EARLY = "early"
#: Seconds Celery's outer hard limit on a message of an inline type adds to its tasks'
#: limits and kill graces (claims, finishes and a slow database fit in it).
OUTER_LIMIT_GRACE = 30
DELIVERY_PERSISTENT = 2
#: After a publish failed to reach the broker, how long the publishes of this process
#: fail at once (see the module text).
UNREACHABLE_SECONDS = 2.0


class BrokerUnreachable(ConnectionError):
    """A publish not tried: one failed to reach the broker less than
    ``UNREACHABLE_SECONDS`` ago in this process."""


class Run(NamedTuple):
    """One message to publish: an attempt of a task, with its type's time limits
    (enforced by Celery or by the worker's agent: ``celery_limits``)."""

    task_id: int
    attempt: int
    time_limit: int | None = None
    soft_time_limit: int | None = None
    #: The task's type, carried for monitors only (Flower, ``celery inspect active``):
    #: the worker reads the type from the row.
    type_name: str = ""
    #: How many runs of its type may share its message (the dispatcher's choice: a
    #: backlog of short tasks of an inline type); consecutive runs are grouped.
    per_message: int = 1
    #: Whether the worker's agent enforces its time limits (an inline type).
    limits_by_worker: bool = False
    #: Whether its message may be acked when a pool process takes it (``ACK_HEADER``):
    #: the dispatcher's choice for runs measured short.
    ack_early: bool = False

    def kwargs(self) -> dict[str, str]:
        """The message's keyword arguments: the type's name, when known."""
        return {"type_name": self.type_name} if self.type_name else {}


def message_id(task_id: int, attempt: int) -> str:
    """The Celery task id of a batch task's message: readable in Flower and in logs."""
    return f"batchtask-{task_id}-{attempt}"


def many_message_id(runs: list[Run]) -> str:
    """The Celery task id of a message of several runs: its first, and how many more."""
    return f"{message_id(runs[0].task_id, runs[0].attempt)}-and-{len(runs) - 1}-more"


def parse_many_args(args: Any) -> list[tuple[int, int]] | None:
    """``(task id, attempt)`` pairs of a ``run_many`` message's arguments."""
    try:
        return [(int(task_id), int(attempt)) for task_id, attempt in args[0]]
    except (TypeError, ValueError, IndexError):
        return None


def messages(tasks: list[Run]) -> list[list[Run]]:
    """Cut runs into messages: consecutive runs of one type share one, up to their
    ``per_message``."""
    out: list[list[Run]] = []
    for run in tasks:
        last = out[-1] if out else None
        if (
            last is not None
            and run.per_message > 1
            and last[0].type_name == run.type_name
            and len(last) < min(run.per_message, last[0].per_message)
        ):
            last.append(run)
        else:
            out.append([run])
    return out


def ack_headers(batch: list[Run]) -> dict[str, str]:
    """The message's own headers: acked early if every run in it may be."""
    return {ACK_HEADER: ACK_EARLY} if all(run.ack_early for run in batch) else {}


def celery_limits(batch: list[Run]) -> tuple[int | None, int | None]:
    """Celery's ``(time_limit, soft_time_limit)`` for a message (see the module text)."""
    first = batch[0]
    if not first.limits_by_worker:
        return first.time_limit, first.soft_time_limit
    if any(run.time_limit is None for run in batch):
        return None, None
    grace = math.ceil(len(batch) * get_settings().KILL_GRACE) + OUTER_LIMIT_GRACE
    return sum(run.time_limit or 0 for run in batch) + grace, None


def parse_message_id(request_id: str) -> tuple[int, int] | None:
    """``(task id, attempt)`` from a run message's id (``batchtask-<id>-<attempt>``)."""
    prefix, _, rest = request_id.partition("-")
    task_id, _, attempt = rest.partition("-")
    if prefix != "batchtask" or not task_id.isdigit() or not attempt.isdigit():
        return None
    return int(task_id), int(attempt)


#: Where ``publish`` sends runs instead of the broker (``redirected``); ``None``: the broker.
_receiver: Callable[[str, list[Run]], None] | None = None


@contextlib.contextmanager
def redirected(receiver: Callable[[str, list[Run]], None]) -> Iterator[None]:
    """Hand every publish to ``receiver(queue, runs)`` instead of the broker while inside
    (the test helpers); the receiver in force before is back afterwards."""
    global _receiver
    previous, _receiver = _receiver, receiver
    try:
        yield
    finally:
        _receiver = previous


def publish(queue: str, tasks: list[Run], *, app: Any = None) -> None:
    """Publish one message per run to ``queue`` (with the current Celery app by default)."""
    if not tasks:
        return
    if _receiver is not None:
        _receiver(queue, list(tasks))
        return
    app = app or current_app
    global _app_checked
    if not _app_checked:
        _app_checked = True
        warn_if_fallback(app)
    global _unreachable_until
    if time.monotonic() < _unreachable_until:
        raise BrokerUnreachable(f"a publish failed to reach the broker just now: {queue}")
    errors: tuple[type[BaseException], ...] = ()
    try:
        with app.pool.acquire(block=True) as connection:
            errors = connection.connection_errors
            channel = connection.default_channel
            if _can_pipeline(channel):
                _publish_pipelined(app, channel, queue, tasks)
                return
        _publish_each(app, queue, tasks)
    except Exception as exc:
        if errors and isinstance(exc, errors):
            _unreachable_until = time.monotonic() + UNREACHABLE_SECONDS
        raise


#: Until when (monotonic s) this process's publishes fail at once (``BrokerUnreachable``).
_unreachable_until = 0.0
#: Whether this process checked the app it publishes with (``warn_if_fallback``).
_app_checked = False


def warn_if_fallback(app: Any) -> bool:
    """Warn if ``app`` is the app Celery falls back on when the project's was never
    imported: it knows none of the project's ``CELERY_*`` settings (only
    ``CELERY_BROKER_URL`` from the environment), so its messages may go to another
    broker, or under no key prefix, where no worker looks; the sweeper would publish
    their tasks again only after ``REPUBLISH_AFTER``. ``publish`` asks once a process."""
    fallback = bool(app.main == "default" and not app.fixups)
    if fallback:
        logger.warning(
            "batchtasks publishes with Celery's fallback app: this process never imported "
            "your Celery app, so your CELERY_* settings (transport options, key prefix, "
            "routes) do not apply to its messages; import it in your project package's "
            "__init__.py (from .celery import app as celery_app), as Celery's Django "
            "guide asks"
        )
    return fallback


def _can_pipeline(channel: Any) -> bool:
    if signals.before_task_publish.receivers or signals.after_task_publish.receivers:
        return False
    needed = ("_create_client", "_inplace_augment_message", "_q_for_pri", "prepare_message")
    return (
        RedisChannel is not None
        and isinstance(channel, RedisChannel)
        and all(hasattr(channel, name) for name in needed)
    )


def _content(batch: list[Run]) -> tuple[str, str, tuple[Any, ...], str]:
    """A message's task name, id, arguments and their repr."""
    if len(batch) == 1:
        run = batch[0]
        args: tuple[Any, ...] = (run.task_id, run.attempt)
        return RUN_TASK_NAME, message_id(run.task_id, run.attempt), args, repr(args)
    pairs = [[run.task_id, run.attempt] for run in batch]
    return RUN_MANY_TASK_NAME, many_message_id(batch), (pairs,), repr((pairs,))


#: Per app, task name and process: a message's headers, properties and embedded
#: options before its own id and arguments (Celery's ``as_task_v2`` took about a tenth
#: of a millisecond a publish to build them; the process id is in the headers).
_templates: dict[tuple[int, str, int], tuple[dict[str, Any], dict[str, Any], Any]] = {}


def _template(app: Any, name: str, run: Run) -> tuple[dict[str, Any], dict[str, Any], Any]:
    key = (id(app), name, os.getpid())
    template = _templates.get(key)
    if template is None:
        # The outcome lives on the BatchTask row: the result backend must not store it again.
        mid = message_id(run.task_id, run.attempt)
        headers, properties, body, _ = app.amqp.as_task_v2(
            mid, name, (), run.kwargs(), ignore_result=True
        )
        properties = dict(properties, delivery_mode=DELIVERY_PERSISTENT)
        template = _templates[key] = (headers, properties, body[2])
    return template


def _publish_pipelined(app: Any, channel: Any, queue: str, tasks: list[Run]) -> None:
    key = channel._q_for_pri(queue, 0)
    pipe = channel._create_client().pipeline(transaction=False)
    for batch in messages(tasks):
        name, mid, args, argsrepr = _content(batch)
        headers, properties, embed = _template(app, name, batch[0])
        first = batch[0]
        message_headers = dict(
            headers,
            id=mid,
            root_id=mid,
            argsrepr=argsrepr,
            kwargsrepr=repr(first.kwargs()),
            timelimit=list(celery_limits(batch)),
            **ack_headers(batch),
        )
        message = channel.prepare_message(
            dumps([list(args), first.kwargs(), embed]),
            0,
            CONTENT_TYPE,
            "utf-8",
            message_headers,
            dict(properties, correlation_id=mid),
        )
        # The AMQP default exchange: the routing key names the queue, no binding lookup.
        channel._inplace_augment_message(message, "", queue)
        pipe.lpush(key, dumps(message))
    pipe.execute()


def _publish_each(app: Any, queue: str, tasks: list[Run]) -> None:
    with app.producer_or_acquire() as producer:
        for batch in messages(tasks):
            name, mid, args, _ = _content(batch)
            first = batch[0]
            time_limit, soft_time_limit = celery_limits(batch)
            app.send_task(
                name,
                args,
                first.kwargs(),
                queue=queue,
                routing_key=queue,
                task_id=mid,
                time_limit=time_limit,
                soft_time_limit=soft_time_limit,
                ignore_result=True,
                producer=producer,
                headers=ack_headers(batch),
            )
