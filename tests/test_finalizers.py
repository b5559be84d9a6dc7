"""Finalizers: called once for every final outcome, durably, retried when they raise, and
a webhook that gets the outcome signed (types in plugins/finalizers.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.core import checks
from django.db import connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from batchtasks import BatchTask, BatchTaskPlugin, TaskState, batchtask, finalizer, transitions
from batchtasks.core.finalizers import finalizers_of, unregister_finalizer
from batchtasks.core.registry import registry
from batchtasks.core.states import AttemptOutcome, FinalizeState
from batchtasks.db.connections import state_db
from batchtasks.models import BatchTaskDefinition
from batchtasks.services import finalize
from batchtasks.services.sweeper import purge
from batchtasks.transitions import Fence, Outcome
from batchtasks.worker import runner
from tests.conftest import purge_queues
from tests.workers import wait_for

SECRET = "tests-only-webhook-secret"
ME = "a" * 32
QUEUES = ["batch.finalizers"]
#: Sweeps, retries and finalizer leases short enough for a test to wait for them.
FAST = {
    "BATCHTASKS_SWEEP_INTERVAL": "0.2",
    "BATCHTASKS_FINALIZE_BACKOFF": "0.2",
    "BATCHTASKS_FINALIZE_LEASE": "2",
}


def row(task: BatchTask) -> BatchTask:
    return BatchTask.objects.get(pk=task.pk)


def calls(media_root: Path, task: BatchTask) -> list[str]:
    """The states the demo finalizer saw for a task, one per completed call."""
    path = media_root / "batchtasks" / "finalized" / str(task.pk)
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def finalized(task: BatchTask, state: str = FinalizeState.DONE) -> bool:
    return row(task).finalize_state == state


# --- in this process -----------------------------------------------------------------
@pytest.fixture
def here(settings: Any, media_root: Path) -> Path:
    """Finalizers run in this process, writing under ``media_root``, retried at once."""
    settings.MEDIA_ROOT = media_root
    settings.BATCHTASKS = {
        **settings.BATCHTASKS,
        "FINALIZE_BACKOFF": 0,
        "FINALIZE_MAX_ATTEMPTS": 3,
    }
    return media_root


@pytest.mark.django_db
def test_cancelling_a_waiting_task_makes_it_due_only_if_its_type_has_finalizers() -> None:
    later = timedelta(hours=1)
    finalized_type = BatchTask.submit("finalizers.demo", run_after=later)
    plain = BatchTask.submit("examples.sleep", run_after=later)

    assert finalized_type.cancel() and plain.cancel()

    assert row(finalized_type).finalize_state == FinalizeState.PENDING
    assert row(finalized_type).finalize_after is not None
    assert row(plain).finalize_state == FinalizeState.NONE


def running(type_name: str, attempt: int = 1) -> BatchTask:
    """A task of ``type_name`` running attempt ``attempt`` as worker instance ``ME``."""
    task = BatchTask.submit(type_name)
    BatchTask.objects.filter(pk=task.pk).update(
        state=TaskState.RUNNING, attempt=attempt, worker_instance=ME, queue="q"
    )
    return task


def end(task: BatchTask, outcome: Outcome, attempt: int = 1) -> transitions.Ended | None:
    return transitions.end_attempt(Fence(task.pk, attempt, ME), outcome, using="default")


@pytest.mark.django_db
def test_an_attempt_that_runs_again_is_not_due_for_finalizers_and_the_last_one_is() -> None:
    failure = Outcome(AttemptOutcome.FAILED, error_message="no", retry=True)
    task = running("finalizers.demo")  # two attempts
    plain = running("examples.sleep")

    assert end(task, failure).runs_again
    assert row(task).finalize_state == FinalizeState.NONE
    BatchTask.objects.filter(pk=task.pk).update(state=TaskState.RUNNING)
    assert end(task, failure, attempt=2).state == TaskState.FAILED
    assert end(plain, Outcome(AttemptOutcome.SUCCEEDED)).state == TaskState.SUCCEEDED

    assert row(task).finalize_state == FinalizeState.PENDING
    assert row(plain).finalize_state == FinalizeState.NONE


@pytest.mark.django_db
def test_a_due_finalizer_runs_once_and_is_recorded_done(here: Path) -> None:
    task = BatchTask.submit("finalizers.demo", run_after=timedelta(hours=1))
    task.cancel()

    assert finalize.run_due(using="default") == 1
    assert finalize.run_due(using="default") == 0

    assert calls(here, task) == [TaskState.CANCELLED]
    done = row(task)
    assert (done.finalize_state, done.finalize_attempts) == (FinalizeState.DONE, 1)


@pytest.mark.django_db
def test_a_superseded_task_is_finalized_as_skipped(here: Path) -> None:
    later = timedelta(hours=1)
    old = BatchTask.submit("finalizers.demo", unique_key="nightly", run_after=later)
    BatchTask.submit("finalizers.demo", unique_key="nightly", on_conflict="supersede")

    finalize.run_due(using="default")

    assert row(old).state == TaskState.SKIPPED
    assert calls(here, old) == [TaskState.SKIPPED]


@pytest.mark.django_db
def test_a_finalizer_that_keeps_raising_is_given_up_with_its_error_and_the_task_unchanged(
    here: Path,
) -> None:
    task = BatchTask.submit("finalizers.raising", run_after=timedelta(hours=1))
    task.cancel()

    for _ in range(5):
        finalize.run_due(using="default")

    failed = row(task)
    assert failed.state == TaskState.CANCELLED
    assert (failed.finalize_state, failed.finalize_attempts) == (FinalizeState.FAILED, 3)
    assert "ConnectionRefusedError: the archive refused task" in failed.finalize_error


@pytest.mark.django_db
def test_a_task_whose_finalizers_are_due_is_kept_past_its_retention(here: Path) -> None:
    task = BatchTask.submit("finalizers.raising", run_after=timedelta(hours=1))
    task.cancel()
    BatchTask.objects.filter(pk=task.pk).update(finished_at=row(task).finished_at - timedelta(1))
    BatchTaskDefinition.objects.filter(pk=task.definition_id).update(retention=60)

    assert purge(using="default") == 0
    BatchTask.objects.filter(pk=task.pk).update(finalize_state=FinalizeState.FAILED)
    assert purge(using="default") == 1


@pytest.mark.django_db
def test_retrying_a_task_finalizes_its_next_outcome_afresh(here: Path) -> None:
    task = BatchTask.submit("finalizers.demo", run_after=timedelta(hours=1))
    task.cancel()
    finalize.run_due(using="default")

    assert task.retry()
    fresh = row(task)
    assert (fresh.finalize_state, fresh.finalize_attempts) == (FinalizeState.NONE, 0)
    fresh.cancel()
    finalize.run_due(using="default")
    assert calls(here, task) == [TaskState.CANCELLED, TaskState.CANCELLED]


@pytest.mark.django_db
def test_the_admin_shows_the_finalizer_error_escaped_and_filters_by_it(admin_client: Client):
    task = BatchTask.submit("finalizers.raising", run_after=timedelta(hours=1))
    task.cancel()
    BatchTask.objects.filter(pk=task.pk).update(
        finalize_state=FinalizeState.FAILED, finalize_attempts=10, finalize_error="<b>down</b>"
    )

    page = admin_client.get(reverse("admin:batchtasks_batchtask_change", args=[task.pk]))
    html = page.content.decode()
    assert "&lt;b&gt;down&lt;/b&gt;" in html and "<b>down</b>" not in html
    listed = admin_client.get(
        reverse("admin:batchtasks_batchtask_changelist") + "?finalize_state__exact=failed"
    )
    assert f'data-task-id="{task.pk}"' in listed.content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_type_without_finalizers_runs_no_finalizer_query(here: Path) -> None:
    plain = BatchTask.submit("examples.noop")
    hooked = BatchTask.submit("finalizers.demo")
    state = connections[state_db("default")]
    try:
        with CaptureQueriesContext(state) as without:
            runner.execute(plain.pk, 1, worker="inline@test")
        with CaptureQueriesContext(state) as with_finalizers:
            runner.execute(hooked.pk, 1, worker="inline@test")
    finally:
        purge_queues(["batch.examples.noop", "batch.finalizers"])

    def claims(queries: CaptureQueriesContext) -> int:
        return sum("finalize_attempts + 1" in q["sql"] for q in queries.captured_queries)

    assert (claims(without), claims(with_finalizers)) == (0, 1)
    assert calls(here, hooked) == [TaskState.SUCCEEDED]
    assert row(hooked).finalize_state == FinalizeState.DONE


def test_a_webhook_without_a_secret_is_a_system_check_error(settings: Any) -> None:
    @batchtask("tests.hooked", webhook="http://127.0.0.1:9/hook")
    class Hooked(BatchTaskPlugin):
        def run(self, params: Any) -> None:
            return None

    try:
        errors = checks.run_checks()
        assert "batchtasks.E005" in [e.id for e in errors]
        settings.BATCHTASKS = {**settings.BATCHTASKS, "WEBHOOK_SECRET": SECRET}
        assert "batchtasks.E005" not in [e.id for e in checks.run_checks()]
    finally:
        registry.unregister("tests.hooked")


def test_a_function_registered_twice_is_called_once() -> None:
    def note(task: Any) -> None:
        return None

    finalizer("tests.twice")(note)
    finalizer("tests.twice")(note)
    try:
        assert finalizers_of("tests.twice") == [note]
    finally:
        unregister_finalizer("tests.twice", note)


# --- with real workers ---------------------------------------------------------------
@pytest.mark.worker
def test_every_final_outcome_calls_the_finalizer_exactly_once(
    start_worker: Any, media_root: Path
) -> None:
    start_worker("w", QUEUES, concurrency=2, env=FAST)
    later = timedelta(hours=1)
    succeeded = BatchTask.submit("finalizers.demo")
    failed = BatchTask.submit("finalizers.demo", {"fail": True})
    running = BatchTask.submit("finalizers.demo", {"seconds": 30})
    waiting = BatchTask.submit("finalizers.demo", run_after=later)
    skipped = BatchTask.submit("finalizers.demo", unique_key="k", run_after=later)
    BatchTask.submit("finalizers.demo", unique_key="k", on_conflict="supersede", run_after=later)
    wait_for(lambda: row(running).state == TaskState.RUNNING)
    assert running.cancel() and waiting.cancel()

    tasks = [succeeded, failed, running, waiting, skipped]
    wait_for(lambda: all(finalized(t) for t in tasks))

    assert [calls(media_root, t) for t in tasks] == [
        [TaskState.SUCCEEDED],
        [TaskState.FAILED],
        [TaskState.CANCELLED],
        [TaskState.CANCELLED],
        [TaskState.SKIPPED],
    ]
    assert row(failed).attempt == 2  # called after its last attempt only
    assert all(row(t).finalize_attempts == 1 for t in tasks)


@pytest.mark.worker
def test_a_worker_killed_before_its_finalizer_returns_leaves_it_to_another_worker(
    start_worker: Any, media_root: Path
) -> None:
    first = start_worker("w1", QUEUES, concurrency=1, env=FAST)
    task = BatchTask.submit("finalizers.demo", {"crash_finalizer": True})
    wait_for(lambda: first.process.poll() is not None)  # its finalizer killed it
    assert row(task).state == TaskState.SUCCEEDED
    assert row(task).finalize_state == FinalizeState.PENDING

    start_worker("w2", ["batch.examples.noop"], concurrency=1, env=FAST)
    wait_for(lambda: finalized(task))

    assert calls(media_root, task) == [TaskState.SUCCEEDED]
    assert row(task).finalize_attempts == 2


@pytest.mark.worker
def test_a_raising_finalizer_is_retried_with_its_error_shown_and_the_outcome_kept(
    start_worker: Any,
) -> None:
    start_worker("w", QUEUES, concurrency=1, env={**FAST, "BATCHTASKS_FINALIZE_MAX_ATTEMPTS": "3"})
    task = BatchTask.submit("finalizers.raising")

    wait_for(lambda: row(task).finalize_attempts >= 2)
    retrying = row(task)
    assert retrying.finalize_state == FinalizeState.PENDING
    assert "ConnectionRefusedError" in retrying.finalize_error
    wait_for(lambda: finalized(task, FinalizeState.FAILED))

    failed = row(task)
    assert (failed.state, failed.result, failed.finalize_attempts) == (
        TaskState.SUCCEEDED,
        "done",
        3,
    )


class Receiver(BaseHTTPRequestHandler):
    """Answers the first request 500 and the others 204; keeps each body and signature."""

    received: list[tuple[bytes, str]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((body, self.headers.get("X-Batchtasks-Signature", "")))
        self.send_response(500 if len(self.received) == 1 else 204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[bytes, str]]]]:
    received: list[tuple[bytes, str]] = []
    handler = type("Handler", (Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/batchtasks", received
    server.shutdown()
    server.server_close()


@pytest.mark.worker
def test_the_webhook_gets_the_signed_outcome_and_is_retried_after_a_500(
    start_worker: Any, receiver: tuple[str, list[tuple[bytes, str]]]
) -> None:
    url, received = receiver
    env = {**FAST, "BATCHTASKS_DEMO_WEBHOOK": url, "BATCHTASKS_WEBHOOK_SECRET": SECRET}
    start_worker("w", QUEUES, concurrency=1, env=env)
    task = BatchTask.submit("finalizers.webhook", {"rows": 3})

    wait_for(lambda: finalized(task))

    assert len(received) == 2  # the 500, then the delivery
    for body, signature in received:
        expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(signature, f"sha256={expected}")
    payload = json.loads(received[-1][0])
    done = row(task)
    assert payload == {
        "id": task.pk,
        "type": "finalizers.webhook",
        "state": "succeeded",
        "state_code": 4,
        "result": {"rows": 3},
        "error_type": "",
        "error_message": "",
        "finished_at": done.finished_at.isoformat(),
        "attempt": 1,
    }
    assert done.finalize_attempts == 2 and done.finalize_error == ""
