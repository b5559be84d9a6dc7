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
from django.contrib.auth import get_user_model
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
from batchtasks.models import BatchTaskDefinition, BatchTaskOutcome
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


def owned_by_a_user(client: Client) -> Any:
    """A user logged in on ``client``: the owner of the tasks a test retries over HTTP."""
    user = get_user_model().objects.create_user("owner")
    client.force_login(user)
    return user


def retry_over_http(client: Client, task: BatchTask) -> int:
    """Retry a task as its owner does, through the JSON API; the response's status."""
    url = reverse("batchtasks:api-retry", args=[task.pk])
    return client.post(url, content_type="application/json").status_code


@pytest.mark.django_db
def test_a_retry_between_a_finalizer_runs_claim_and_its_load_leaves_it_the_claimed_outcome(
    here: Path, client: Client
) -> None:
    owner = owned_by_a_user(client)
    task = BatchTask.submit("finalizers.demo", owner=owner, run_after=timedelta(hours=1))
    task.cancel()
    retried: list[int] = []

    def retry_right_after_the_claim(execute: Any, sql: str, *args: Any) -> Any:
        result = execute(sql, *args)
        if "finalize_attempts + 1" in sql and not retried:
            retried.append(retry_over_http(client, task))
        return result

    with connections["default"].execute_wrapper(retry_right_after_the_claim):
        finalize.run_due(using="default")

    assert retried == [200]
    assert calls(here, task) == [TaskState.CANCELLED]  # not "new": the outcome it was due for
    kept = BatchTaskOutcome.objects.get(task_id=task.pk)
    assert (kept.attempt, kept.finalize_state) == (1, FinalizeState.DONE)
    assert row(task).cancel()  # the retried run's own outcome, finalized in its turn
    finalize.run_due(using="default")
    assert calls(here, task) == [TaskState.CANCELLED, TaskState.CANCELLED]
    assert (row(task).attempt, row(task).finalize_state) == (2, FinalizeState.DONE)


@pytest.mark.django_db
def test_a_finalizer_that_fails_after_a_retry_is_retried_for_its_own_outcome(
    here: Path, client: Client
) -> None:
    owner = owned_by_a_user(client)
    task = BatchTask.submit("finalizers.demo", owner=owner, run_after=timedelta(hours=1))
    seen: list[tuple[int, str]] = []

    def flaky_archive(final: BatchTask) -> None:
        seen.append((final.attempt, final.state))
        if len(seen) == 1:  # the user retries the task while its first outcome is archived
            assert retry_over_http(client, task) == 200
            raise ConnectionResetError("the archive hung up")

    finalizer("finalizers.demo")(flaky_archive)
    try:
        task.cancel()
        finalize.run_due(using="default")  # outcome 1 fails after the retry
        failed = BatchTaskOutcome.objects.get(task_id=task.pk)  # its error is outcome 1's
        assert (failed.attempt, failed.finalize_state) == (1, FinalizeState.PENDING)
        assert "ConnectionResetError: the archive hung up" in failed.finalize_error
        assert row(task).finalize_error == ""
        assert row(task).cancel()  # outcome 2
        for _ in range(3):
            finalize.run_due(using="default")
    finally:
        unregister_finalizer("finalizers.demo", flaky_archive)

    cancelled = TaskState.CANCELLED
    assert sorted(seen) == [(1, cancelled), (1, cancelled), (2, cancelled)]
    assert row(task).finalize_state == FinalizeState.DONE
    kept = BatchTaskOutcome.objects.get(task_id=task.pk)
    assert (kept.finalize_attempts, kept.finalize_state) == (2, FinalizeState.DONE)


@pytest.mark.django_db
@pytest.mark.parametrize("delete", ["purge", "delete_tasks"])
def test_a_task_whose_earlier_outcome_is_still_to_be_finalized_is_kept_until_it_is(
    here: Path, delete: str
) -> None:
    task = BatchTask.submit("finalizers.raising", run_after=timedelta(hours=1))
    task.cancel()
    assert task.retry() and row(task).cancel()  # outcome 1 kept, still to be finalized
    long_ago = row(task).finished_at - timedelta(1)
    BatchTask.objects.filter(pk=task.pk).update(
        finished_at=long_ago, finalize_state=FinalizeState.FAILED
    )
    BatchTaskDefinition.objects.filter(pk=task.definition_id).update(retention=60)

    def deleted() -> int:
        if delete == "purge":
            return purge(using="default")
        return transitions.delete_tasks([task.pk], using="default")

    assert deleted() == 0
    kept = BatchTaskOutcome.objects.filter(task_id=task.pk)
    assert kept.update(finalize_state=FinalizeState.FAILED) == 1
    assert deleted() == 1
    assert not kept.exists()


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


class OutcomeReceiver(BaseHTTPRequestHandler):
    """Holds every delivery of attempt 1 until ``release`` is set, answers the first
    delivery of attempt 2 with 500 and the others 204; logs each delivery it answered as
    (attempt, status, payload), and each arrival's attempt."""

    arrived: list[int]
    answered: list[tuple[int, int, dict[str, Any]]]
    release: threading.Event

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        attempt = payload["attempt"]
        self.arrived.append(attempt)
        if attempt == 1:
            self.release.wait(timeout=120)
        failed_before = any(a == attempt for a, _, _ in self.answered)
        status = 500 if attempt == 2 and not failed_before else 204
        self.answered.append((attempt, status, payload))
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def outcome_receiver() -> Iterator[tuple[str, type[OutcomeReceiver]]]:
    handler = type(
        "Handler",
        (OutcomeReceiver,),
        {"arrived": [], "answered": [], "release": threading.Event()},
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/batchtasks", handler
    handler.release.set()
    server.shutdown()
    server.server_close()


@pytest.mark.worker
def test_a_retried_task_delivers_each_outcome_once_though_its_first_webhook_was_slow(
    start_worker: Any, outcome_receiver: tuple[str, type[OutcomeReceiver]], client: Client
) -> None:
    url, hooks = outcome_receiver
    env = {
        **FAST,
        "BATCHTASKS_DEMO_WEBHOOK": url,
        "BATCHTASKS_WEBHOOK_SECRET": SECRET,
        # The first outcome's delivery is in flight for as long as the test holds it.
        "BATCHTASKS_FINALIZE_LEASE": "120",
        "BATCHTASKS_WEBHOOK_TIMEOUT": "120",
        # The second outcome's 500 is retried once the first outcome's run has ended.
        "BATCHTASKS_FINALIZE_BACKOFF": "3",
    }
    start_worker("w", QUEUES, concurrency=2, env=env)
    owner = owned_by_a_user(client)
    task = BatchTask.submit("finalizers.webhook", {"fail_attempt": 1}, owner=owner)

    wait_for(lambda: 1 in hooks.arrived)  # attempt 1 failed; its webhook is in flight
    assert retry_over_http(client, task) == 200
    wait_for(lambda: [(a, s) for a, s, _ in hooks.answered] == [(2, 500)])
    hooks.release.set()  # the first outcome's webhook answers 204 now

    def delivered(attempt: int) -> list[dict[str, Any]]:
        return [p for a, s, p in hooks.answered if a == attempt and s == 204]

    def nothing_left_to_run() -> bool:
        kept = BatchTaskOutcome.objects.filter(task_id=task.pk)
        return finalized(task) and not kept.exclude(finalize_state=FinalizeState.DONE).exists()

    try:
        wait_for(lambda: delivered(1) and delivered(2) and nothing_left_to_run())
    except AssertionError:
        log = [(a, s, p["state"]) for a, s, p in hooks.answered]
        raise AssertionError(f"receiver log {log}, task {row(task).finalize_state!r}") from None

    assert sorted((a, s) for a, s, _ in hooks.answered) == [(1, 204), (2, 204), (2, 500)]
    kept = BatchTaskOutcome.objects.get(task_id=task.pk)  # where outcome 1's run recorded
    assert (kept.attempt, kept.state, kept.finalize_attempts) == (1, TaskState.FAILED, 1)
    assert row(task).finalize_attempts == 2  # outcome 2's own runs: the 500, the delivery
    first, second = delivered(1)[0], delivered(2)[0]
    assert (first["state"], first["error_type"], first["result"]) == (
        "failed",
        "ConnectionError",
        None,
    )
    assert (second["state"], second["result"]) == ("succeeded", {"fail_attempt": 1})
    assert first["id"] == second["id"] == task.pk


@pytest.mark.django_db(transaction=True)
def test_a_finalizer_run_whose_connection_dies_before_its_record_is_recorded_once(
    here: Path,
) -> None:
    """PostgreSQL restarted (or the backend killed) between a finalizer's side effects and
    the record of its run: the record is written on a new connection, not left for the
    claim's lease to run out and the finalizers to run a second time."""
    import psycopg

    task = BatchTask.submit("finalizers.demo", run_after=timedelta(hours=1))
    task.cancel()
    database = connections["default"]

    def cut_off(final: BatchTask) -> None:
        pid = database.connection.info.backend_pid
        with psycopg.connect(**database.get_connection_params(), autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", [pid])

    finalizer("finalizers.demo")(cut_off)
    try:
        assert finalize.run_due(using="default") == 1
    finally:
        unregister_finalizer("finalizers.demo", cut_off)

    assert calls(here, task) == [TaskState.CANCELLED]
    assert finalized(task)
