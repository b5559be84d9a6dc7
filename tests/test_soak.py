"""The soak's judgement of its ledgers (bench/soak/judge.py): each invariant it checks,
broken and kept, without containers or a database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.chaos.ledger import Faults, Final, Run
from bench.soak.judge import Fault, Hook, Ledgers, Request, Submission, in_fault, judge, throughput

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def task(task_id: int, type_name: str = "soak.open", **options: Any) -> Submission:
    return Submission(task_id, type_name, at(0), **options)


def run(task_id: int, start: float, end: float | None, attempt: int = 1, host: str = "w1") -> Run:
    return Run(task_id, attempt, host, task_id, at(start), None if end is None else at(end))


def done(task_id: int, start: float, end: float) -> Run:
    return replace(run(task_id, start, end), outcome="done")


def final(task_id: int, when: float, state: str = "succeeded", attempt: int = 1) -> Final:
    return Final(task_id, attempt, state, at(when))


def hook(task_id: int, when: float, attempt: int = 1, signed: bool = True) -> Hook:
    return Hook(task_id, attempt, "succeeded", signed, at(when))


def request(
    action: str,
    task_id: int,
    sent: float,
    state: str = "",
    *,
    status: int = 200,
    attempt: int | None = None,
) -> Request:
    path = f"/tasks/{task_id}/{action}/"
    return Request("POST", path, status, at(sent), at(sent + 0.1), task_id, action, state, attempt)


def ledgers(**given: Any) -> Ledgers:
    base = Ledgers(
        submissions=[task(1)],
        runs=[run(1, 1, 2)],
        finals=[final(1, 2)],
        hooks=[],
        requests=[],
        timeline=[],
        faults=Faults(),
        end_bound=at(100),
        settle=10.0,
        limits={"soak.limited": 2},
        webhook_types=frozenset(),
    )
    return replace(base, **given)


def test_a_clean_soak_breaks_nothing() -> None:
    counts = judge(ledgers())
    assert counts.breaks == {}
    assert (counts.submitted, counts.runs, counts.outcomes) == (1, 1, {"succeeded": 1})


def test_a_task_without_an_outcome_by_the_end_bound_is_lost() -> None:
    counts = judge(ledgers(submissions=[task(1), task(2)], finals=[final(1, 2), final(2, 101)]))
    assert counts.breaks == {"lost": 1}
    assert counts.examples["lost"] == [2]


def test_a_retried_task_needs_an_outcome_after_its_retry() -> None:
    finals = [final(1, 2, "cancelled")]
    retried = [request("retry", 1, 5)]
    assert judge(ledgers(finals=finals, requests=retried)).lost == 1
    again = [*finals, final(1, 7, attempt=2)]
    counts = judge(ledgers(finals=again, requests=retried, runs=[run(1, 6, 7, attempt=2)]))
    assert counts.breaks == {}
    assert counts.retries == 1


def test_a_refused_retry_asks_for_no_new_outcome() -> None:
    refused = [request("retry", 1, 5, status=409)]
    assert judge(ledgers(requests=refused)).breaks == {}


def test_one_outcome_finalized_twice_and_a_task_succeeding_twice_are_double_completions() -> None:
    assert judge(ledgers(finals=[final(1, 2), final(1, 3)])).twice == 1
    two_successes = [final(1, 2), final(1, 5, attempt=2)]
    assert judge(ledgers(finals=two_successes)).twice == 1


def test_a_finalizer_called_again_after_its_container_was_killed_is_a_repeat() -> None:
    """Side effects at least once: a finalizer cut short by its container's kill, before
    its run could be recorded, is called again (a lease later); not a second completion."""
    calls = [replace(final(1, 2), host="w1"), replace(final(1, 62), host="w2")]
    killed = Faults()
    killed.killed["w1"].append(at(3))
    counts = judge(ledgers(finals=calls, faults=killed, hooks=[hook(1, 2), hook(1, 62)],
                           webhook_types=frozenset({"soak.open"})))  # fmt: skip
    assert (counts.breaks, counts.finalizer_repeats) == ({}, 1)
    # Killed before the first call, or another container's kill: twice all the same.
    elsewhere = Faults()
    elsewhere.killed["w2"].append(at(3))
    early = Faults()
    early.killed["w1"].append(at(1))
    for faults in (elsewhere, early, Faults()):
        assert judge(ledgers(finals=calls, faults=faults)).breaks == {"twice": 1}


def test_two_runs_of_one_task_at_once_overlap() -> None:
    runs = [run(1, 1, 3), run(1, 2, 4, attempt=2, host="w2")]
    assert judge(ledgers(runs=runs)).breaks == {"overlaps": 1}


def test_a_typed_limit_is_checked_on_its_own_type_only() -> None:
    limited = [task(n, "soak.limited") for n in (1, 2, 3)]
    runs = [run(n, 1, 3) for n in (1, 2, 3)]
    finals = [final(n, 3) for n in (1, 2, 3)]
    counts = judge(ledgers(submissions=limited, runs=runs, finals=finals))
    assert counts.breaks == {"limit_breaks": 1}
    open_ones = [task(n) for n in (1, 2, 3)]
    assert judge(ledgers(submissions=open_ones, runs=runs, finals=finals)).breaks == {}


def test_every_outcome_of_a_webhook_type_is_called_exactly_once() -> None:
    typed = {"webhook_types": frozenset({"soak.open"})}
    assert judge(ledgers(**typed)).breaks == {"webhooks_missing": 1}
    assert judge(ledgers(hooks=[hook(1, 3)], **typed)).breaks == {}
    repeated = judge(ledgers(hooks=[hook(1, 3), hook(1, 4)], **typed))
    assert repeated.breaks == {"webhooks_repeated": 1}
    stray = judge(ledgers(hooks=[hook(1, 3), hook(1, 4, attempt=2)], **typed))
    assert stray.breaks == {"webhooks_stray": 1}
    unsigned = judge(ledgers(hooks=[hook(1, 3, signed=False)], **typed))
    assert unsigned.breaks == {"webhooks_unsigned": 1}


def test_a_task_cancelled_while_waiting_must_not_start_until_retried() -> None:
    cancel = request("cancel", 1, 5, state="cancelled")
    quiet = judge(ledgers(runs=[], finals=[final(1, 5, "cancelled")], requests=[cancel]))
    assert quiet.breaks == {}
    assert quiet.cancels_waiting == 1
    started = judge(ledgers(runs=[run(1, 6, 7)], finals=[final(1, 7)], requests=[cancel]))
    assert started.breaks == {"cancelled_waiting_started": 1}
    retried = [cancel, request("retry", 1, 8)]
    after_retry = judge(
        ledgers(runs=[run(1, 9, 10, attempt=2)], finals=[final(1, 5, "cancelled"),
                final(1, 10, attempt=2)], requests=retried)
    )  # fmt: skip
    assert after_retry.breaks == {}


def test_a_retry_without_an_answer_may_have_run_the_cancelled_task_again() -> None:
    """The answer names the attempt it cancelled: a later attempt's run came from a retry,
    answered or not (a fault can swallow the answer of a retry that was applied)."""
    cancel = request("cancel", 1, 5, state="cancelled", attempt=1)
    unanswered = request("retry", 1, 8, status=0)  # in a fault's window
    given = ledgers(
        runs=[run(1, 9, 10, attempt=2)],
        finals=[final(1, 5, "cancelled"), final(1, 10, attempt=2)],
        requests=[cancel, unanswered],
        timeline=[Fault("broker_partition", at(7), at(8.5))],
    )
    assert judge(given).breaks == {}
    counts = judge(replace(given, runs=[run(1, 9, 10)]))
    assert counts.breaks == {"cancelled_waiting_started": 1}


def test_a_cancel_answered_running_may_see_its_run_go_on() -> None:
    cancel = request("cancel", 1, 1.5, state="running")
    counts = judge(ledgers(finals=[final(1, 2, "cancelled")], requests=[cancel]))
    assert counts.breaks == {}
    assert counts.cancels_running == 1


def test_a_skipped_outcome_that_ran_is_a_break() -> None:
    skipped = final(1, 2, "skipped")
    assert judge(ledgers(runs=[], finals=[skipped])).breaks == {}
    assert judge(ledgers(finals=[skipped])).breaks == {"skipped_started": 1}


def test_a_delayed_task_must_not_start_before_its_run_after() -> None:
    delayed = [task(1, due=at(1.5))]
    assert judge(ledgers(submissions=delayed)).breaks == {"early_starts": 1}
    assert judge(ledgers(submissions=[task(1, due=at(1))])).breaks == {}


def test_a_keyed_submit_that_returned_the_running_task_is_not_a_new_submission() -> None:
    """``supersede`` returns the running task with the key: the driver records its id
    again, with the ``run_after`` it has by then (a retry's, later than its first run)."""
    again = [task(1, due=at(0.5)), task(1, due=at(3))]
    assert judge(ledgers(submissions=again)).breaks == {}
    assert judge(ledgers(submissions=again)).submitted == 1


def test_a_child_must_start_after_every_parent_ran_to_its_end() -> None:
    family = [task(1), task(2), task(3, "soak.child", parents=(1, 2))]
    parents = [done(1, 1, 2), done(2, 1, 4)]
    finals = [final(1, 2.5), final(2, 4.5), final(3, 6)]
    early = judge(ledgers(submissions=family, runs=[*parents, done(3, 3, 6)], finals=finals))
    assert early.breaks == {"dependency_breaks": 1}
    # The last parent's finalizer may record after its child started: its final write
    # (which frees the child) comes first.
    later = judge(ledgers(submissions=family, runs=[*parents, done(3, 4.2, 6)], finals=finals))
    assert later.breaks == {}
    assert later.children == 1
    unfinished = [done(1, 1, 2), run(2, 1, None)]
    never = judge(ledgers(submissions=family, runs=[*unfinished, done(3, 5, 6)], finals=finals))
    assert never.breaks == {"dependency_breaks": 1}


def test_5xx_answers_break_only_outside_the_fault_windows() -> None:
    timeline = [Fault("postgres_restart", at(10), at(12))]
    errors = [
        Request("GET", "/tasks/", 500, at(11), at(11.2)),  # during
        Request("GET", "/tasks/", 0, at(21), at(22.5)),  # within settle
        Request("GET", "/tasks/", 502, at(40), at(40.1)),  # outside
        Request("GET", "/tasks/", 404, at(50), at(50.1)),  # not a server error
    ]
    counts = judge(ledgers(requests=errors, timeline=timeline))
    assert counts.api_5xx_in_faults == 2
    assert counts.breaks == {"api_5xx_outside_faults": 1}


def test_a_worker_that_exited_by_itself_fails_the_soak() -> None:
    counts = judge(ledgers(exited=["chaos-2"]))
    assert counts.breaks == {"workers_exited": 1}
    assert counts.examples["workers_exited"] == ["chaos-2"]


def test_a_fault_that_failed_to_fire_fails_the_soak() -> None:
    timeline = [Fault("broker_pause", at(10), at(11), error="CalledProcessError()")]
    counts = judge(ledgers(timeline=timeline))
    assert counts.breaks == {"fault_errors": 1}
    assert counts.faults == {"broker_pause": 1}


def test_a_window_lasts_a_settle_after_its_fault() -> None:
    timeline = [Fault("x", at(10), at(12))]
    assert [in_fault(at(s), timeline, 5) for s in (9, 10, 17, 17.1)] == [False, True, True, False]


def test_throughput_counts_outcomes_per_step() -> None:
    finals = [final(1, 0.5), final(2, 4.9), final(3, 5), final(4, 11), final(5, 99)]
    assert throughput(finals, at(0), at(12), 5.0) == [2, 1, 1]
