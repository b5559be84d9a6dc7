"""The soak's load: a submitter (``BatchTask.submit`` from this process, as an
application would) and a simulated user (the HTTP API with an API token), each a thread
that keeps going through faults and records what it did for the judge."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import close_old_connections, connections

from bench.chaos.stack import Stack

from .judge import Request, Submission

logger = logging.getLogger("bench.soak")

#: What the submitter submits, with weights: one of these a step.
KINDS = {
    "limited": 3,
    "open": 2,
    "tiny": 2,
    "timed": 1,
    "process": 2,
    "exec": 1,
    "delayed": 1,
    "supersede": 2,
    "depends": 1,
    "then": 1,
}


def now() -> datetime:
    return datetime.now(UTC)


class Submitter(threading.Thread):
    """Submit the mixed load, ``backlog`` tasks ahead of the finalizer's record."""

    def __init__(self, *, backlog: int, rng: random.Random) -> None:
        super().__init__(name="soak-submitter", daemon=True)
        self.stack = Stack()
        self.backlog, self.rng = backlog, rng
        self.submissions: list[Submission] = []
        #: the submits that failed, by exception (faults make some)
        self.errors: Counter[str] = Counter()
        self._halt = threading.Event()
        self._serial = 0

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)

    def run(self) -> None:
        kinds, weights = list(KINDS), list(KINDS.values())
        try:
            while not self._halt.is_set():
                if self._outstanding() >= self.backlog:
                    self._halt.wait(0.1)
                    continue
                kind = self.rng.choices(kinds, weights)[0]
                try:
                    self.submissions += getattr(self, f"_{kind}")()
                except Exception as exc:  # a fault of the stack: try again later
                    if not self.errors[type(exc).__name__]:
                        print(f"[soak] a {kind} submit failed: {exc!r}", flush=True)
                    self.errors[type(exc).__name__] += 1
                    close_old_connections()
                    for conn in connections.all():
                        conn.close()
                    self._halt.wait(0.5)
                self._halt.wait(0.02)
        finally:
            connections.close_all()

    def _outstanding(self) -> int:
        if not self.submissions:
            return 0
        try:
            done = self.stack.query(
                "SELECT count(DISTINCT task_id) FROM chaos.finals WHERE task_id >= %s",
                (min(s.task_id for s in self.submissions[-500:]),),
            )[0][0]
        except RuntimeError:
            return self.backlog
        recent = {s.task_id for s in self.submissions[-500:]}
        return len(recent) - int(done)

    def _one(self, type_name: str, params: Any, kind: str, **options: Any) -> Submission:
        from batchtasks import BatchTask

        task = BatchTask.submit(type_name, params, **options)
        due = None
        if "run_after" in options:
            task.refresh_from_db(fields=["run_after"])
            due = task.run_after
        return Submission(int(task.pk), type_name, now(), due=due, kind=kind)

    def _limited(self) -> list[Submission]:
        return [self._one("soak.limited", {"seconds": 0.4}, "limited")]

    def _open(self) -> list[Submission]:
        return [self._one("soak.open", {"seconds": 0.2}, "open")]

    def _timed(self) -> list[Submission]:
        seconds = self.rng.choice([0.3, 0.3, 3.0])  # a third run past the 2 s timeout
        return [self._one("soak.timed", {"seconds": seconds}, "timed")]

    def _process(self) -> list[Submission]:
        return [self._one("soak.process", {"seconds": 0.2}, "process")]

    def _exec(self) -> list[Submission]:
        return [self._one("soak.exec", {"seconds": 0.2}, "exec")]

    def _delayed(self) -> list[Submission]:
        delay = timedelta(seconds=self.rng.uniform(1, 6))
        return [self._one("soak.open", {"seconds": 0.1}, "delayed", run_after=delay)]

    def _supersede(self) -> list[Submission]:
        """A waiting task keyed like an earlier waiting one skips it (``supersede``)."""
        self._serial += 1
        return [
            self._one(
                "soak.open",
                {"seconds": 0.1},
                "supersede",
                unique_key=f"soak-{self._serial % 3}",
                on_conflict="supersede",
                run_after=timedelta(seconds=2),
            )
        ]

    def _tiny(self) -> list[Submission]:
        from batchtasks import BatchTask

        group = BatchTask.submit_many("soak.tiny", [{}] * 10)
        at = now()
        return [Submission(int(t.pk), "soak.tiny", at, kind="tiny") for t in group]

    def _depends(self) -> list[Submission]:
        parents = [*self._open(), *self._limited()]
        child = self._one("soak.child", {}, "depends", depends_on=[p.task_id for p in parents])
        return [*parents, _with_parents(child, parents)]

    def _then(self) -> list[Submission]:
        from batchtasks import BatchTask

        group = BatchTask.submit_many("soak.tiny", [{}] * 3)
        at = now()
        parents = [Submission(int(t.pk), "soak.tiny", at, kind="tiny") for t in group]
        task = group.then("soak.child", {})
        child = Submission(int(task.pk), "soak.child", now(), kind="then")
        return [*parents, _with_parents(child, parents)]


def _with_parents(child: Submission, parents: list[Submission]) -> Submission:
    return Submission(
        child.task_id,
        child.type,
        child.at,
        due=child.due,
        parents=tuple(p.task_id for p in parents),
        kind=child.kind,
    )


class User(threading.Thread):
    """A user of the HTTP API (``api``: ``…/batchtasks/api``) with an API token: submits
    ``soak.open`` tasks, cancels them running or waiting, retries cancelled ones, and
    reads lists and tasks. Every request is a ``Request``."""

    def __init__(self, api: str, token: str, *, rng: random.Random) -> None:
        super().__init__(name="soak-user", daemon=True)
        self.api, self.token, self.rng = api.rstrip("/"), token, rng
        self.requests: list[Request] = []
        self.submissions: list[Submission] = []
        self.cancelled: list[tuple[int, float]] = []
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)

    def run(self) -> None:
        actions: list[tuple[Callable[[], None], int]] = [
            (self._cancel_running, 2),
            (self._cancel_waiting, 2),
            (self._retry, 2),
            (self._read, 3),
        ]
        while not self._halt.is_set():
            action = self.rng.choices([a for a, _ in actions], [w for _, w in actions])[0]
            action()
            self._halt.wait(self.rng.uniform(0.3, 1.2))

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        action: str = "",
        task_id: int | None = None,
    ) -> tuple[int, Any]:
        """One request; its status (0: no answer) and decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.api + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        # The image expects a TLS-terminating proxy in front: this is the header it sets.
        request.add_header("X-Forwarded-Proto", "https")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        sent, status, answer = now(), 0, None
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                status, answer = response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (OSError, ValueError) as exc:
            logger.debug("%s %s: %r", method, path, exc)
        named = answer if isinstance(answer, dict) else {}
        self.requests.append(
            Request(
                method,
                path,
                status,
                sent,
                now(),
                task_id=task_id,
                action=action,
                state=named.get("state", ""),
                attempt=named.get("attempt"),
            )
        )
        return status, answer

    def _submit(self, body: dict[str, Any]) -> int | None:
        status, answer = self.call("POST", "/tasks/", body, action="submit")
        if status != 201 or not isinstance(answer, dict):
            return None
        task_id = int(answer["id"])
        self.submissions.append(Submission(task_id, "soak.open", now(), kind="api"))
        return task_id

    def _cancel(self, task_id: int) -> None:
        status, _ = self.call("POST", f"/tasks/{task_id}/cancel/", action="cancel", task_id=task_id)
        if 200 <= status < 300:
            self.cancelled.append((task_id, time.monotonic()))

    def _cancel_running(self) -> None:
        task_id = self._submit({"type": "soak.open", "params": {"seconds": 3}})
        if task_id is not None:
            self._halt.wait(self.rng.uniform(0.5, 2.0))
            self._cancel(task_id)

    def _cancel_waiting(self) -> None:
        body = {"type": "soak.open", "params": {"seconds": 0.2}, "run_after": 30}
        task_id = self._submit(body)
        if task_id is not None:
            self._halt.wait(0.2)
            self._cancel(task_id)

    def _retry(self) -> None:
        """Run again a task cancelled at least 5 s ago (each once)."""
        ready = [c for c in self.cancelled if time.monotonic() - c[1] > 5]
        if not ready:
            return
        task_id, _ = chosen = self.rng.choice(ready)
        self.cancelled.remove(chosen)
        self.call("POST", f"/tasks/{task_id}/retry/", action="retry", task_id=task_id)

    def _read(self) -> None:
        status, answer = self.call("GET", "/tasks/?limit=20&type=soak.open")
        if status == 200 and isinstance(answer, dict) and answer.get("results"):
            task_id = self.rng.choice(answer["results"])["id"]
            self.call("GET", f"/tasks/{task_id}/")
