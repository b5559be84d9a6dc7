"""The scale-out driver's arithmetic (bench/scaleout.py): a container's CPU read from its
cgroup, the connections each worker container held, CPU net of idle, and the table."""

from __future__ import annotations

import pytest

from bench.scaleout import (
    Drain,
    Shape,
    net_of_idle,
    parse_cpu_stat,
    parse_cpuacct_usage,
    peak_connections,
    table,
)

PACKED = Shape("packed", "packed tiny tasks", "examples.noop", 1000)


def test_cgroup_v1_usage_is_nanoseconds() -> None:
    assert parse_cpuacct_usage("2500000000\n") == pytest.approx(2.5)


def test_cgroup_v2_cpu_stat_reads_usage_usec() -> None:
    text = "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\nnr_periods 0\n"
    assert parse_cpu_stat(text) == pytest.approx(1.5)


def test_cgroup_v2_cpu_stat_without_usage_is_an_error() -> None:
    with pytest.raises(ValueError, match="usage_usec"):
        parse_cpu_stat("user_usec 1\n")


def test_peak_connections_is_the_most_of_one_sample_by_container() -> None:
    samples = [
        {"172.18.0.4": 3, "172.18.0.1": 2},
        {"172.18.0.4": 7, "172.18.0.5": 6},
        {"172.18.0.4": 5, "172.18.0.5": 7},
    ]
    addresses = {"172.18.0.4": "scale-1", "172.18.0.5": "scale-2"}
    # The driver's own connections (the gateway's address) are no container's.
    assert peak_connections(samples, addresses) == {"scale-1": 7, "scale-2": 7}


def test_idle_use_is_taken_off_and_never_below_zero() -> None:
    used = {"postgres": 1.0, "scale-1": 0.1}
    idle = {"postgres": 0.05, "scale-1": 0.2}  # CPU seconds a second
    assert net_of_idle(used, idle, seconds=4.0) == pytest.approx({"postgres": 0.8, "scale-1": 0.0})


def test_table_gives_rates_cost_per_task_and_connections_per_process() -> None:
    one = Drain(PACKED, 1, seconds=2.0, cpu={"scale-1": 0.5, "postgres": 0.25, "redis": 0.0})
    one.connections = {"scale-1": 6}
    two = Drain(PACKED, 2, seconds=1.0, cpu={"scale-1": 0.3, "scale-2": 0.3, "postgres": 0.25})
    two.connections = {"scale-1": 6, "scale-2": 5}
    lines = table([one, two], concurrency=2)
    assert lines[0].startswith("| shape | worker containers | tasks/s |")
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    # 1,000 tasks in 2 s; 0.5 ms of worker and 0.25 ms of PostgreSQL CPU per task, so one
    # PostgreSQL core would take 4,000 a second; 0.75 s of CPU in 2 s is 0.38 cores busy;
    # 6 connections for 3 processes.
    assert cells[2:6] == ["500", "1.00x", "0.50 ms", "0.25 ms"]
    assert cells[8:] == ["0.38", "4,000", "6 (2.0)"]
    cells = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert cells[2:5] == ["1,000", "2.00x", "0.60 ms"]
    assert cells[-1] == "6 (2.0)"
