"""A worker cut off Redis (not PostgreSQL) for longer than a lease, then reconnected:
it takes messages again. Through a proxy the test cuts (tests/netfault.py): bytes held
both ways, the connections open, as a dropped route holds them."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from urllib.parse import urlsplit

import pytest

from batchtasks import BatchTask, TaskState
from tests import rabbitmq
from tests.netfault import proxied
from tests.test_recovery import FAST
from tests.test_workers import wait_final
from tests.workers import wait_for

pytestmark = pytest.mark.worker

SLEEP = ["batch.examples.sleep"]


@pytest.mark.skipif(rabbitmq.in_use(), reason="a Redis broker's connection")
def test_a_worker_cut_off_the_broker_takes_messages_again_once_reconnected(start_worker) -> None:
    url = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    with proxied((url.hostname or "127.0.0.1", url.port or 6379)) as proxy:
        broker = f"redis://127.0.0.1:{proxy.port}{url.path}"
        w = start_worker("w", SLEEP, concurrency=2, env={**FAST, "REDIS_URL": broker}, chatty=True)
        busy = BatchTask.submit("examples.sleep", {"seconds": 2})
        wait_for(lambda: BatchTask.objects.filter(pk=busy.pk, state=TaskState.RUNNING).exists())

        # Due during the cut: the worker's own dispatch pass publishes them through it.
        BatchTask.submit_many(
            "examples.sleep", [{"seconds": 0.1}] * 6, run_after=timedelta(seconds=3)
        )
        proxy.cut()
        time.sleep(14)  # longer than a lease (FAST: 4 s) and its sweeps
        proxy.mend()

        (busy,) = wait_final(busy, timeout=60)
        after = BatchTask.submit_many("examples.sleep", [{"seconds": 0.1}] * 4)
        done = wait_final(*after, timeout=60)
        assert [t.state for t in done] == [TaskState.SUCCEEDED] * 4, w.log()[-4000:]
        assert {t.worker for t in done} == {w.hostname}
