"""The child of a process-isolated run: forked from the pool process's template
(``template``), or, where it cannot be, ``python -m batchtasks.worker.isolation.child``.

A spawned child sets up Django with the pool process's settings module (a forked one
has it from the template); then it reads the attempt as one JSON line on stdin (a spare
child waits there for the next attempt), runs the plugin,
and writes JSON lines to the pipe named by ``BATCHTASKS_EVENT_FD``:
``{"progress": [percent, message]}`` any number of times, then one of
``{"result": …}``, ``{"error": {…}}`` or ``{"cancelled": message, "stopped": …}``.
Later stdin lines ``{"cancel": true}`` make ``check_cancelled()`` raise; the end of stdin
means the pool process is gone, and the child kills its own process group.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import signal
import sys
import threading
import traceback
from types import FrameType
from typing import Any

EVENT_FD_ENV = "BATCHTASKS_EVENT_FD"


class Events:
    """The pipe to the pool process, one JSON object a line (any thread may write)."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "w", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def send(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":"), allow_nan=False)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()


class ChildContext:
    """The plugin's view of its run inside the child (see ``core.plugin.TaskContext``)."""

    def __init__(self, start: dict[str, Any], events: Events) -> None:
        self.task_id: int | None = start["task_id"]
        self.attempt: int = start["attempt"]
        self.worker: str = start["worker"]
        self.events = events
        self.cancelled = False

    def report_progress(self, percent: int, message: str) -> None:
        self.events.send({"progress": [percent, message]})

    def cancel_requested(self) -> bool:
        return self.cancelled

    def load_task(self) -> Any:
        from batchtasks.models import BatchTask

        assert self.task_id is not None
        return BatchTask.objects.select_related("definition").with_owner().get(pk=self.task_id)

    def listen(self) -> None:
        """Follow the pool process's stdin lines; its end means the pool process is gone."""
        for line in sys.stdin.buffer:
            if json.loads(line).get("cancel"):
                self.cancelled = True
        os.killpg(os.getpgrp(), signal.SIGKILL)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    from batchtasks.core.exceptions import TaskStopped

    raise TaskStopped("The task was stopped by its worker (a cancel it did not honour).")


def _on_soft_limit(signum: int, frame: FrameType | None) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    raise SoftTimeLimitExceeded()


def limit_memory(limit: int | None) -> None:
    """Cap this process's address space (and its descendants') at ``limit`` bytes, soft and
    hard: an unprivileged plugin cannot lift a hard limit. The child runs one attempt and
    only sends its outcome down a pipe afterwards, so it never needs the limit back."""
    if not limit:
        return
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    cap = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def run(start: dict[str, Any], events: Events) -> dict[str, Any]:
    """Run the plugin the way the runner would, and say how it ended."""
    from batchtasks.core.codecs import decode
    from batchtasks.core.exceptions import TaskCancelled, TaskStopped
    from batchtasks.core.registry import registry
    from batchtasks.core.retries import is_retryable
    from batchtasks.worker.isolation.results import (
        MAX_MESSAGE,
        MAX_TRACEBACK,
        check_result,
        error_type,
    )

    context = ChildContext(start, events)
    threading.Thread(target=context.listen, name="batchtasks-parent", daemon=True).start()
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    if start.get("function_module"):
        registry.learn_function(start["type"], start["function_module"])
    try:
        plugin_cls = registry.get(start["type"]).plugin
        retry_on = plugin_cls.retry_on
        params = decode(base64.b64decode(start["data"]), start["codec"])
        limit_memory(start.get("memory_limit"))
        result = plugin_cls(context).run(params)
        check_result(start["type"], result)
    except TaskCancelled as exc:
        return {"cancelled": str(exc), "stopped": isinstance(exc, TaskStopped)}
    except Exception as exc:
        return {
            "error": {
                "type": error_type(exc),
                "message": str(exc)[:MAX_MESSAGE],
                "traceback": "".join(traceback.format_exception(exc))[-MAX_TRACEBACK:],
                "retryable": is_retryable(exc, retry_on),
            }
        }
    return {"result": result}


def install_signals() -> None:
    """SIGTERM stops the plugin, SIGUSR1 is Celery's soft time limit reaching it."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGUSR1, _on_soft_limit)


def main() -> None:
    """Set Django up, then take the attempt (a spawned child: no template to fork from)."""
    events_fd = int(os.environ.pop(EVENT_FD_ENV))
    install_signals()
    import django

    # Set up before the attempt arrives: a spare child does it while it waits.
    django.setup()
    serve(events_fd)


def serve(events_fd: int) -> None:
    """Read the attempt, run it, report, exit (never returns)."""
    try:
        events = Events(events_fd)
        line = sys.stdin.buffer.readline()
        if not line:  # the pool process went away before it needed this child
            os._exit(0)
        events.send(run(json.loads(line), events))
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # its outcome could not be reported: its exit code says it
        traceback.print_exc()
        os._exit(1)
    # Not sys.exit: threads the plugin left behind must not keep the child alive (and a
    # child forked from the template must never return into its loop).
    os._exit(0)


if __name__ == "__main__":
    main()
