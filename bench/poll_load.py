"""The load generator of bench/poll.py, a process of its own: ``python -m bench.poll_load``.

It reads one JSON line of config on stdin (``port``, ``path``, ``sessions``, ``paced``,
``seconds``), polls once per user, prints "warm", waits for a "go" line, polls for
``seconds`` and prints one JSON line of results.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections import Counter
from typing import Any

from bench.run import percentile


class Poller:
    """One signed-in browser tab polling like the indicator (cookies, ETag, XHR header)."""

    def __init__(self, pool: Any, path: str, session: str, paced: bool) -> None:
        self.pool, self.path, self.session, self.paced, self.etag = pool, path, session, paced, ""
        self.cookies = {"sessionid": session}
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.span = 0.0

    def poll(self, record: bool = True) -> None:
        """One request; with ``record``, its latency and status count in the results."""
        cookie = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        headers = {"Cookie": cookie, "X-Requested-With": "XMLHttpRequest"}
        if self.etag:
            headers["If-None-Match"] = self.etag
        start = time.perf_counter()
        try:
            response = self.pool.request("GET", self.path, headers=headers)
        except Exception as exc:  # a refused or reset connection is a result, not a crash
            self.statuses[type(exc).__name__] += record
            return
        if response.status == 200:
            self.etag = response.headers.get("ETag", "")
        self.keep_cookies(response.headers.getlist("Set-Cookie"))
        if record:
            self.latencies.append((time.perf_counter() - start) * 1000)
            self.statuses[str(response.status)] += 1

    def keep_cookies(self, lines: list[str]) -> None:
        """Keep the cookies the server sets (the indicator's poll token), as a browser does."""
        for line in lines:
            name, _, rest = line.partition("=")
            value = rest.split(";", 1)[0]
            if value and "max-age=0" not in rest.lower():
                self.cookies[name.strip()] = value
            else:
                self.cookies.pop(name.strip(), None)

    def run(self, warm: threading.Barrier, go: threading.Event, seconds: float) -> None:
        """Poll once unrecorded, wait for ``go``, then poll for ``seconds``."""
        self.poll(record=False)  # the first poll after page load, answered in full
        warm.wait()
        go.wait()
        if self.paced:  # users opened their pages at any moment
            time.sleep(random.Random(self.session).random())
        start = time.perf_counter()
        while time.perf_counter() < start + seconds:
            self.poll()
            if self.paced:
                time.sleep(1.0)  # the indicator polls again 1 s after the last answer
        self.span = time.perf_counter() - start


def summary(pollers: list[Poller], cpu_start: float) -> dict[str, Any]:
    """The results of all pollers; CPU time counts from ``cpu_start`` to the percentiles' end."""
    latencies = [x for p in pollers for x in p.latencies] or [0.0]
    requests = sum(len(p.latencies) for p in pollers)
    return {
        "requests": requests, "throughput": sum(len(p.latencies) / p.span for p in pollers),
        "statuses": sum((p.statuses for p in pollers), Counter[str]()),
        **{p: percentile(latencies, int(p[1:])) for p in ("p50", "p95", "p99")},
        "load_generator_cpu": (time.process_time() - cpu_start) * 1000 / max(1, requests),
    }  # fmt: skip


def load_main() -> None:
    """The load generator: config on stdin, "warm", wait for "go", results."""
    # One thread per user on urllib3's pool: no asyncio HTTP client is installed, and the
    # sync workers close every connection anyway, so a pool saves nothing more.
    import urllib3

    config = json.loads(sys.stdin.readline())
    pool = urllib3.HTTPConnectionPool(
        "127.0.0.1", config["port"], maxsize=len(config["sessions"]), block=True,
        retries=False, timeout=urllib3.Timeout(connect=30, read=60),
    )  # fmt: skip
    pollers = [Poller(pool, config["path"], s, config["paced"]) for s in config["sessions"]]
    warm, go = threading.Barrier(len(pollers) + 1), threading.Event()
    threads = [threading.Thread(target=p.run, args=(warm, go, config["seconds"])) for p in pollers]
    for thread in threads:
        thread.start()
    warm.wait()
    print("warm", flush=True)
    sys.stdin.readline()
    cpu = time.process_time()
    go.set()
    for thread in threads:
        thread.join()
    print(json.dumps(summary(pollers, cpu)), flush=True)


if __name__ == "__main__":
    load_main()
