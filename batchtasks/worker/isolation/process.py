"""The pool process's side of a process-isolated run (the child is ``child``, forked by
the pool process's template, ``forkserver``, or spawned where it cannot be)."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from typing import Any, NamedTuple, TypeAlias

from django.conf import settings

from ...core.exceptions import IsolatedRunFailed, TaskCancelled, TaskStopped
from ...core.plugin import TaskContext
from ...services.facts import TypeFacts
from ...transitions import Claim
from .. import stopping
from . import forkserver, reaper
from .child import EVENT_FD_ENV
from .forkserver import Forked
from .supervise import CANCEL, Supervisor

logger = logging.getLogger(__name__)

CHILD_MODULE = "batchtasks.worker.isolation.child"
DIED = "batchtasks.IsolatedProcessDied"


class _Events:
    """What the child reported: progress goes on at once, the last word is kept."""

    def __init__(self, context: TaskContext, supervisor: Supervisor) -> None:
        self.context = context
        self.supervisor = supervisor
        self.last: dict[str, Any] | None = None

    def line(self, text: str) -> None:
        if not text:
            return
        event = json.loads(text)
        if "progress" in event:
            percent, message = event["progress"]
            self.supervisor.active()
            self.context.report_progress(int(percent), str(message))
        else:
            self.last = event


#: The attempt's process, forked by the template or spawned.
Process: TypeAlias = "subprocess.Popen[bytes] | Forked"


class _Child(NamedTuple):
    process: subprocess.Popen[bytes]
    #: The read end of its event pipe.
    events: int


#: A spawned child started after the last run (where there is no template), setting
#: Django up while the pool process waits for its next message: it has run nothing, and
#: it takes the next attempt.
_spare: _Child | None = None


def _spawn() -> _Child:
    read_fd, write_fd = os.pipe()
    env = {**os.environ, EVENT_FD_ENV: str(write_fd)}
    env["DJANGO_SETTINGS_MODULE"] = settings.SETTINGS_MODULE
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", CHILD_MODULE],
            stdin=subprocess.PIPE,
            pass_fds=(write_fd,),
            env=env,
            start_new_session=True,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return _Child(process, read_fd)


def _take() -> _Child:
    """The spare child if it is still there, else a new one."""
    global _spare
    spare, _spare = _spare, None
    if spare is not None and spare.process.poll() is None:
        return spare
    if spare is not None:
        os.close(spare.events)
    return _spawn()


def _start_spare() -> None:
    global _spare
    if _spare is None:
        try:
            _spare = _spawn()
        except OSError:  # no spare then; the next run starts its own
            logger.warning("batchtasks could not start a spare child", exc_info=True)


def run(claim: Claim, facts: TypeFacts, context: TaskContext) -> Any:
    """Run the attempt in a child process of its own and return its result, or raise
    what its end means (its error, a cancel, an inactivity timeout, its death)."""
    with reaper.adopting() as orphans:
        child, read_fd = _begin(orphans)
        assert child.stdin is not None
        supervisor = Supervisor(
            child,
            context,
            inactivity=facts.inactivity_timeout,
            on_cancel=lambda: _send(child, {"cancel": True}),
            on_soft_limit=lambda: _signal(child, signal.SIGUSR1),
            orphans=orphans,
        )
        events = _Events(context, supervisor)
        with stopping.child_group(child.pid):
            try:
                _send(child, _start(claim, facts, context))
                supervisor.watch({read_fd: events.line})
            finally:
                supervisor.finish()
                if isinstance(child, Forked):
                    child.release()
                with contextlib.suppress(OSError):
                    child.stdin.close()
                os.close(read_fd)
    if isinstance(child, Forked):
        forkserver.prepare()
    else:
        _start_spare()
    assert child.returncode is not None
    return _outcome(events.last, supervisor, child.returncode, facts)


def _begin(orphans: reaper.Orphans) -> tuple[Process, int]:
    """The attempt's child and the read end of its event pipe: a fork of the template,
    else (no subreaper here, no template wanted, or two templates failed) a spawn."""
    if forkserver.enabled():
        try:
            return forkserver.fork(orphans)
        except OSError:
            logger.warning("batchtasks spawns a child: no template could fork it", exc_info=True)
    spawned, read_fd = _take()
    return spawned, read_fd


def _start(claim: Claim, facts: TypeFacts, context: TaskContext) -> dict[str, Any]:
    """The attempt as the child reads it."""
    return {
        "type": facts.name,
        "data": base64.b64encode(claim.data).decode(),
        "codec": claim.codec,
        "task_id": claim.task_id,
        "attempt": claim.attempt,
        "worker": getattr(context, "worker", ""),
        "memory_limit": facts.memory_limit,
        "function_module": facts.function_module,
    }


def _send(child: Process, message: dict[str, Any]) -> None:
    assert child.stdin is not None
    with contextlib.suppress(OSError):  # the child is gone: its exit says the rest
        child.stdin.write(json.dumps(message).encode() + b"\n")
        child.stdin.flush()


def _signal(child: Process, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, signum)


def _outcome(
    last: dict[str, Any] | None, supervisor: Supervisor, returncode: int, facts: TypeFacts
) -> Any:
    if supervisor.reason != CANCEL:
        supervisor.raise_for_stop()
    if last is not None and "result" in last:
        return last["result"]
    if last is not None and "cancelled" in last:
        cls = TaskStopped if last.get("stopped") else TaskCancelled
        raise cls(str(last["cancelled"]))
    if supervisor.reason == CANCEL:
        raise TaskStopped("The task was cancelled; its process was stopped by its worker.")
    if last is not None and "error" in last:
        error = last["error"]
        raise IsolatedRunFailed(
            str(error["message"]),
            error_type=str(error["type"]),
            details=str(error["traceback"]),
            retryable=bool(error["retryable"]),
        )
    raise IsolatedRunFailed(_death(returncode, facts), error_type=DIED)


def _death(returncode: int, facts: TypeFacts) -> str:
    how = (
        f"was killed by {signal.Signals(-returncode).name}"
        if returncode < 0
        else f"exited with code {returncode}"
    )
    hint = (
        f"; it may have gone past its memory_limit of {facts.memory_limit:,} bytes"
        if facts.memory_limit
        else ""
    )
    return (
        f"The process running task type {facts.name!r} {how} before it reported an outcome{hint}."
    )
