"""The database side of single polls, timed in-process, and EXPLAIN of the tasks query."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from typing import Any

Plan = tuple[str, int, float, list[str]]


def kind_of(sql: str) -> str:
    """Which part of a poll a query serves, by the first table it names (the poll token's
    one query names the session, user and task tables)."""
    if all(f'"{table}"' in sql for table in ("django_session", "batchtasks_batchtask")):
        return "token"
    kinds = {
        "django_session": "session", "batchtasks_batchtask": "tasks", "auth_user": "user",
        "auth_permission": "permissions",
    }  # fmt: skip
    return next((kind for table, kind in kinds.items() if f'"{table}"' in sql), "other")


class QueryTimer:
    """A ``connection.execute_wrapper`` adding up query time per kind for the current poll."""

    def __init__(self) -> None:
        self.current: defaultdict[str, float] = defaultdict(float)
        self.user = 0
        self.sql: dict[tuple[int, str], tuple[str, Any]] = {}  # first query per user, kind

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        """Run the query, adding its time and count to the current poll."""
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.current[kind_of(sql)] += (time.perf_counter() - start) * 1000
            self.current["queries"] += 1
            self.sql.setdefault((self.user, kind_of(sql)), (sql, params))


def time_polls(
    path: str, sessions: list[str], polls: int
) -> tuple[dict[str, list[float]], QueryTimer]:
    """Poll through Django's test client, timing every query; odd users send their ETag."""
    from django.db import connection
    from django.test import Client

    timer, samples = QueryTimer(), defaultdict[str, list[float]](list)
    clients = [Client(headers={"X-Requested-With": "XMLHttpRequest"}) for _ in sessions]
    etags = [""] * len(sessions)
    with connection.execute_wrapper(timer):
        for i in range(len(sessions) + polls):  # the first round warms up, unrecorded
            timer.user = n = i % len(sessions)
            timer.current.clear()
            clients[n].cookies["sessionid"] = sessions[n]
            start = time.perf_counter()
            response = clients[n].get(path, headers={"If-None-Match": etags[n]} if etags[n] else {})
            total = (time.perf_counter() - start) * 1000
            etags[n] = response.headers.get("ETag", "") if n % 2 else ""
            if i < len(sessions):
                continue
            for kind, value in timer.current.items():
                samples[kind].append(value)
            samples["all SQL"].append(sum(ms for k, ms in timer.current.items() if k != "queries"))
            samples[f"python {response.status_code}"].append(total - samples["all SQL"][-1])
    return samples, timer


def explain(sql: str, params: Any) -> tuple[float, list[str]]:
    """EXPLAIN (ANALYZE, BUFFERS) of a query: median execution time of 5 runs, last plan."""
    from django.db import connection

    times, plan = [], []
    with connection.cursor() as cursor:
        for _ in range(5):
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            plan = [row[0] for row in cursor.fetchall()]
            times.append(float(next(x for x in plan if x.startswith("Execution Time")).split()[2]))
    return statistics.median(times), plan


def explain_users(ids: list[int], timer: QueryTimer) -> list[Plan]:
    """EXPLAIN the tasks query the API ran for the median user and for the heaviest one."""
    from django.db.models import Count

    from batchtasks.models import BatchTask

    owned = BatchTask.objects.order_by().values("owner").annotate(n=Count("id"))
    counts = {row["owner"]: row["n"] for row in owned}
    ranked = sorted(ids, key=lambda pk: counts.get(pk, 0))
    plans = []
    for label, pk in (("median", ranked[len(ranked) // 2]), ("heaviest", ranked[-1])):
        # timer.user is the index into the sessions, which fill() made in the order of ids
        if query := timer.sql.get((ids.index(pk), "tasks")):
            plans.append((label, counts.get(pk, 0), *explain(*query)))
    return plans
