"""The chaos driver's judgement of its ledger (bench/chaos/ledger.py): what counts as a
lost task, a double completion, a task beside itself and a broken limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bench.chaos.ledger import Faults, Final, Row, Run, Window, judge, runs_of
from bench.chaos.scenarios import Settings, starvation_note

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(task: int, start: float, end: float | None, host: str = "w1", attempt: int = 1) -> Run:
    return Run(task, attempt, host, 1, at(start), None if end is None else at(end))


def final(task: int, when: float, state: str = "succeeded") -> Final:
    return Final(task, 1, state, at(when))


def verdict(
    ids: list[int], runs: list[Run], finals: list[Final], faults: Faults, limit: int = 4
) -> Row:
    return judge(
        "s", submitted=ids, runs=runs, finals=finals, faults=faults, window=WINDOW, limit=limit
    )


WINDOW = Window(before=(at(0), at(10)), fault=(at(10), at(12)), after=(at(20), at(30)),
                end_bound=at(40))  # fmt: skip


def test_a_task_without_a_final_outcome_by_the_end_bound_is_lost() -> None:
    row = verdict([1, 2], [run(1, 1, 2), run(2, 1, 2)], [final(1, 2), final(2, 41)],
                Faults())  # fmt: skip
    assert (row.submitted, row.succeeded, row.lost) == (2, 1, 1)
    assert not row.invariants_hold


def test_a_task_finalized_twice_is_completed_twice() -> None:
    row = verdict([1], [run(1, 1, 2)], [final(1, 2), final(1, 3)], Faults())
    assert row.twice == 1


def test_a_run_on_a_paused_worker_does_not_overlap_its_rerun_during_the_pause() -> None:
    faults = Faults()
    faults.paused["w1"].append((at(11), at(25)))
    runs = [run(1, 10, 25.1, host="w1"), run(1, 20, 21, host="w2", attempt=2)]
    row = verdict([1], runs, [final(1, 21)], faults)
    assert row.overlaps == 0


def test_a_paused_run_that_goes_on_beside_its_rerun_after_the_thaw_overlaps() -> None:
    faults = Faults()
    faults.paused["w1"].append((at(11), at(20)))
    runs = [run(1, 10, 22, host="w1"), run(1, 21, 23, host="w2", attempt=2)]
    assert verdict([1], runs, [final(1, 23)], faults).overlaps == 1


def test_a_run_that_never_ended_executed_until_its_worker_was_killed() -> None:
    faults = Faults()
    faults.killed["w1"].append(at(11))
    runs = [run(1, 10, None, host="w1"), run(1, 20, 21, host="w2", attempt=2)]
    assert verdict([1], runs, [final(1, 21)], faults).overlaps == 0
    # Not killed: it may still be running, beside its rerun.
    assert verdict([1], runs, [final(1, 21)], Faults()).overlaps == 1


def test_more_runs_at_once_than_the_limit_is_a_limit_break_and_touching_is_not() -> None:
    runs = [run(1, 0, 5), run(2, 1, 5), run(3, 5, 6)]
    assert verdict([1, 2, 3], runs, [], Faults(), limit=2).limit_breaks == 0
    runs.append(run(4, 4, 7))
    assert verdict([1, 2, 3, 4], runs, [], Faults(), limit=2).limit_breaks == 1


def test_recovery_and_throughput_after_the_fault_come_from_the_final_outcomes() -> None:
    finals = [final(i, i + 0.5) for i in range(10)]  # 1 a second before the fault
    finals += [final(100 + i, 13 + i) for i in range(18)]  # 1 a second from 13 s
    row = verdict([f.task_id for f in finals], [], finals, Faults())
    assert row.recovery == 1.0
    assert row.after_percent == 100.0


def test_a_run_whose_process_was_seen_gone_executed_until_then() -> None:
    faults = Faults()
    faults.paused["w1"].append((at(11), at(20)))
    faults.gone[("w1", 1)] = at(20.5)
    runs = [run(1, 10, None, host="w1"), run(1, 21, 22, host="w2", attempt=2)]
    assert verdict([1], runs, [final(1, 22)], faults).overlaps == 0
    runs = [run(1, 10, None, host="w1"), run(1, 20.2, 22, host="w2", attempt=2)]
    assert verdict([1], runs, [final(1, 22)], faults).overlaps == 1


def test_a_run_that_never_ended_ended_when_its_process_started_another() -> None:
    faults = Faults()
    faults.paused["w1"].append((at(11), at(20)))
    runs = [run(1, 10, None, host="w1"), run(1, 20.5, 21, host="w2", attempt=2)]
    runs.append(run(2, 20.2, 20.6, host="w1"))  # pid 1 of w1 again: task 1's run was over
    assert verdict([1, 2], runs, [final(1, 21), final(2, 21)], faults).overlaps == 0


def test_what_a_run_executes_after_a_thaw_is_a_remnant_not_a_limit_break() -> None:
    faults = Faults()
    faults.paused["w1"].append((at(11), at(20)))
    runs = [run(1, 10, 20.25, host="w1")] + [run(i, 19.5, 21, host="w2") for i in (2, 3)]
    row = verdict([1, 2, 3], runs, [], faults, limit=2)
    assert (row.limit_breaks, row.remnant) == (0, 0.25)


def test_a_hindered_worker_that_starts_no_run_after_its_fault_is_stuck() -> None:
    faults = Faults()
    faults.hindered["w1"].append((at(10), at(12)))
    faults.hindered["w2"].append((at(10), at(12)))
    runs = [run(1, 11, 11.5, host="w1"), run(2, 14, 15, host="w2"), run(3, 13, 14, host="w3")]
    row = verdict([1, 2, 3], runs, [final(i, 15) for i in (1, 2, 3)], faults)
    assert (row.rejoin, row.stuck) == (2.0, 1)
    assert not row.invariants_hold
    runs.append(run(4, 12.5, 13, host="w1"))
    row = verdict([1, 2, 3, 4], runs, [final(i, 15) for i in (1, 2, 3, 4)], faults)
    assert (row.rejoin, row.stuck) == (2.0, 0)
    assert row.invariants_hold


def test_a_run_after_the_end_bound_does_not_count_as_a_rejoin() -> None:
    faults = Faults()
    faults.hindered["w1"].append((at(10), at(12)))
    row = verdict([1], [run(1, 41, 42, host="w1")], [final(1, 20)], faults)
    assert row.stuck == 1


def test_throughput_during_the_fault_is_against_the_window_before_it() -> None:
    finals = [final(i, i + 0.5) for i in range(10)]  # 1 a second before the fault
    finals += [final(100, 11)]  # 1 in the fault's 2 s
    row = verdict([f.task_id for f in finals], [], finals, Faults())
    assert row.during_percent == 50.0


def test_runs_of_another_type_than_the_loads_do_not_count_against_its_limit() -> None:
    runs = [run(1, 0, 5), run(2, 1, 5), run(3, 2, 5)]
    assert verdict([1, 2, 3], runs, [], Faults(), limit=2).limit_breaks == 1
    faults = Faults()
    faults.other_type.add(3)
    assert verdict([1, 2, 3], runs, [], faults, limit=2).limit_breaks == 0


def test_priority_starvation_notes_how_many_low_tasks_started_and_the_longest_wait() -> None:
    off = Settings(lease=8, sweep=2)
    assert starvation_note([], 5, 538, off) == (
        "priority 0 (no aging): 0 of 5 started during the 60 s flood at priority 100 (538 tasks)"
    )
    on = Settings(lease=8, sweep=2, aging=0.3)
    assert starvation_note([31.0, 33.25], 5, 540, on) == (
        "priority 0 (aging 0.3 s a point): 2 of 5 started during the 60 s flood at "
        "priority 100 (540 tasks), the last after 33.2 s"
    )


def test_a_repeated_finalizer_call_is_twice_unless_the_fault_struck_finalizers() -> None:
    finals = [final(1, 2), final(1, 32), final(2, 3)]
    plain = verdict([1, 2], [run(1, 1, 2), run(2, 1, 3)], finals, Faults())
    assert (plain.twice, plain.repeats) == (1, 1)
    struck = Faults(finalizers_struck=True)
    row = verdict([1, 2], [run(1, 1, 2), run(2, 1, 3)], finals, struck)
    assert (row.twice, row.repeats) == (0, 1)
    assert row.invariants_hold


def test_two_outcomes_finalized_are_twice_even_where_the_fault_struck_finalizers() -> None:
    second = Final(1, 2, "succeeded", at(5))
    row = verdict([1], [run(1, 1, 2), run(1, 3, 4, attempt=2)], [final(1, 2), second],
                  Faults(finalizers_struck=True))  # fmt: skip
    assert (row.twice, row.repeats) == (1, 0)
    assert not row.invariants_hold


def test_what_a_scenarios_own_check_found_broken_fails_it() -> None:
    faults = Faults()
    faults.broken.append("the hog ran 3 times")
    row = verdict([1], [run(1, 1, 2)], [final(1, 2)], faults)
    assert row.broken == 1
    assert not row.invariants_hold


def test_a_run_the_ledger_never_saw_end_takes_the_end_its_host_noted() -> None:
    rows = [
        ("t1", 1, 1, "chaos-1", 10, at(1), None, None),  # stopped while cut off the ledger
        ("t2", 2, 1, "chaos-1", 10, at(2), at(3), "done"),
        ("t3", 3, 1, "chaos-2", 11, at(2), None, None),  # no note either: unknown end
    ]
    local = {"t1": ("TaskStopped", at(1.5)), "t2": ("done", at(9))}
    one, two, three = runs_of(rows, local)
    assert (one.ended, one.outcome) == (at(1.5), "TaskStopped")
    assert (two.ended, two.outcome) == (at(3), "done")  # the ledger's own end stands
    assert three.ended is None
