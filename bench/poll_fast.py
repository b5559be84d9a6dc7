"""The fast path's CPU per unchanged poll, in this process: the part of a 304 that is ours.

bench/poll.py runs ``fast_path_cpu`` after its load phases; alone (a smaller database)::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/batchtasks \
        .venv/bin/python -m bench.poll_fast

Calls the reference project's WSGI application (``project.wsgi``: Django behind
``batchtasks.web.fastpoll``) as a server does, with the environ of each user's poll
(session and token cookies, ``If-None-Match``), and counts ``time.process_time``: the
CPU of this process only, so other work on the machine does not inflate it, and the
PostgreSQL backend's CPU is not in it. What a server adds per request (parsing,
writing, the connection) is not in it either.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections import Counter
from http.cookies import SimpleCookie
from typing import Any

POLLS = int(os.environ.get("BENCH_POLL_FAST_POLLS", "3000"))
POLL_PATH = "/batchtasks/api/tasks/active/"


class Tab:
    """One user's indicator calling the WSGI application: cookies and the last ETag."""

    def __init__(self, session: str) -> None:
        self.cookies, self.etag, self.status = {"sessionid": session}, "", ""

    def environ(self) -> dict[str, Any]:
        """The environ gunicorn builds for the indicator's poll."""
        environ = {
            "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": POLL_PATH,
            "QUERY_STRING": "", "RAW_URI": POLL_PATH, "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1:8000", "HTTP_ACCEPT": "*/*",
            "HTTP_X_REQUESTED_WITH": "XMLHttpRequest",
            "HTTP_COOKIE": "; ".join(f"{k}={v}" for k, v in self.cookies.items()),
            "wsgi.input": io.BytesIO(b""), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
            "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
            "wsgi.version": (1, 0),
        }  # fmt: skip
        if self.etag:
            environ["HTTP_IF_NONE_MATCH"] = self.etag
        return environ

    def start_response(self, status: str, headers: list[tuple[str, str]], *_: Any) -> None:
        self.status = status.split(maxsplit=1)[0]
        for name, value in headers:
            if name == "ETag":
                self.etag = value
            elif name == "Set-Cookie":
                for key, morsel in SimpleCookie(value).items():
                    self.cookies[key] = morsel.value

    def poll(self, application: Any) -> str:
        """One request through ``application``, closed as a server closes it."""
        chunks = application(self.environ(), self.start_response)
        try:
            for _ in chunks:
                pass
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        return self.status


def fast_path_cpu(sessions: list[str], polls: int = POLLS) -> tuple[float, Counter[str]]:
    """CPU milliseconds per 304 answer over ``polls`` polls of the users of ``sessions`` in
    turn (after one full poll each), and the statuses answered. The few 200s (a task
    that left a user's window of recent ones) are left out of the figure."""
    from project.wsgi import application

    tabs = [Tab(session) for session in sessions]
    for tab in tabs:
        tab.poll(application)  # the page's first poll: a 200 that sets the token
    statuses: Counter[str] = Counter()
    spent = 0.0
    for i in range(polls):
        start = time.process_time()
        status = tabs[i % len(tabs)].poll(application)
        if status == "304":
            spent += time.process_time() - start
        statuses[status] += 1
    return spent * 1000 / max(1, statuses["304"]), statuses


def main() -> None:
    """A scratch database of ``BENCH_POLL_USERS`` users and 10,000 tasks; the figure."""
    from bench.poll import USERS, configure, fill
    from bench.scratch import scratch_database

    with scratch_database("pollfast") as url:
        configure(url)
        _, sessions = fill(USERS, int(os.environ.get("BENCH_POLL_TASKS", "10000")))
        for _ in range(int(os.environ.get("BENCH_POLL_FAST_RUNS", "3"))):
            ms, statuses = fast_path_cpu(sessions)
            print(f"poll.in_process.fast_path_cpu_per_304: {ms:.3f} ms ({dict(statuses)})")


if __name__ == "__main__":
    main()
