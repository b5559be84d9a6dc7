"""The pool process's side of the template (``template``): a forkserver per pool process.

The pool process starts its template the first time it runs a ``process`` attempt (it
pays Django's setup once, not per attempt), asks it for a child per attempt, and
replaces it after ``ISOLATION_TEMPLATE_FORKS`` forks (right after the attempt, so the
new one sets up while the worker waits for its next message) and when it is found dead
(the attempt at hand asks the new one: no attempt is lost to a template's death). Code
or settings that change come with a worker restart, which ends the pool processes and,
with them, their templates (the end of its socket ends a template).

The child is the template's; the template says when it ended and how (``Forked``), and
the supervisor stops its process group as it would a spawned child's. Its orphans come
to the pool process, a subreaper while the attempt runs (``reaper``), as a spawned
child's do. With ``ISOLATION_TEMPLATE_FORKS = 0``, or when even a fresh template cannot
fork, ``process`` spawns a fresh interpreter for the attempt instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import subprocess
import sys
from typing import BinaryIO

from django.conf import settings

from ...core.conf import get_settings
from .reaper import Orphans
from .template import RELEASE, TEMPLATE_FD_ENV

logger = logging.getLogger(__name__)

TEMPLATE_MODULE = "batchtasks.worker.isolation.template"
#: Seconds to wait for a template's answer (the first one includes Django's setup).
ANSWER_SECONDS = 60.0
#: Exit code of a child whose pid could not be waited for (it was not re-parented).
UNKNOWN_EXIT = 255


class Forked:
    """A child forked by the template (the part of ``Popen`` the supervisor uses): its
    parent, the template, says when and how it ended. Should the template die first, the
    child is re-parented to this process (a subreaper while the attempt runs), which
    then waits for it itself."""

    def __init__(self, pid: int, stdin: BinaryIO, template: Template) -> None:
        self.pid = pid
        self.stdin = stdin
        self.returncode: int | None = None
        self._template: Template | None = template

    def exited(self, timeout: float = 0.0) -> bool:
        """Whether it ended, waiting for it at most ``timeout`` seconds."""
        if self.returncode is None and self._template is not None and timeout > 0:
            select.select([self._template.socket], [], [], timeout)
        if self.returncode is None:
            self._collect(block=False)
        return self.returncode is not None

    def wait(self) -> int:
        while self.returncode is None:
            self._collect(block=True)
        return self.returncode

    def release(self) -> None:
        """Let the template reap it (after the supervisor killed what was left of its group)."""
        if self._template is not None:
            with contextlib.suppress(OSError):
                self._template.socket.send(RELEASE)

    def _collect(self, *, block: bool) -> None:
        if self._template is not None:
            try:
                answer = self._template.socket.recv(4096, 0 if block else socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                answer = b""
            if answer:
                self.returncode = int(json.loads(answer)["exit"])
                return
            self._template.dead = True
            self._template = None
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | (0 if block else os.WNOHANG))
        except ChildProcessError:  # not re-parented here: it cannot be watched any more
            self.returncode = UNKNOWN_EXIT
            return
        if info is not None:
            self.returncode = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


class Template:
    """One template process and the socket to it."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE,
            TEMPLATE_FD_ENV: str(theirs.fileno()),
        }
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", TEMPLATE_MODULE],
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env=env,
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.socket = ours
        #: The pool process it serves (a process forked from that one must not use it).
        self.owner = os.getpid()
        self.forks = 0
        #: Its socket closed while a child ran (it died or ended).
        self.dead = False

    def fork(self, stdin: int, events: int) -> int:
        """Ask for a child reading ``stdin`` and writing ``events``; return its pid (its
        exit comes later on the same socket, ``Forked``)."""
        self.forks += 1
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE}
        request = json.dumps({"env": env, "cwd": os.getcwd()}).encode()
        try:
            socket.send_fds(self.socket, [request], [stdin, events])
            if not select.select([self.socket], [], [], ANSWER_SECONDS)[0]:
                raise TimeoutError(f"the template gave no answer in {ANSWER_SECONDS} s")
            answer = self.socket.recv(4096)
        except BaseException:
            # Its answers are out of step now (Celery's soft limit can strike here too).
            self.dead = True
            raise
        if not answer:
            raise ConnectionError(f"the template pid={self.process.pid} exited")
        reply = json.loads(answer)
        if "error" in reply:
            raise OSError(f"the template could not fork: {reply['error']}")
        return int(reply["pid"])

    def close(self) -> None:
        self.socket.close()
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()


_template: Template | None = None


def enabled() -> bool:
    """Whether children come from a template (``ISOLATION_TEMPLATE_FORKS`` > 0)."""
    return get_settings().ISOLATION_TEMPLATE_FORKS > 0


def fork(orphans: Orphans) -> tuple[Forked, int]:
    """A child from the template and the read end of its event pipe; a dead template is
    replaced once (``OSError`` if the new one fails too)."""
    stdin_read, stdin_write = os.pipe()
    events_read, events_write = os.pipe()
    try:
        pid, template = _fork_pid(orphans, stdin_read, events_write)
    except BaseException:
        os.close(stdin_write)
        os.close(events_read)
        raise
    finally:
        os.close(stdin_read)
        os.close(events_write)
    return Forked(pid, os.fdopen(stdin_write, "wb"), template), events_read


def _fork_pid(orphans: Orphans, stdin: int, events: int) -> tuple[int, Template]:
    for tries_left in (1, 0):
        template = _living(orphans)
        try:
            pid = template.fork(stdin, events)
        except OSError:  # socket.timeout and a closed socket too
            logger.warning(
                "batchtasks template failed pid=%s forks=%s",
                template.process.pid,
                template.forks,
                exc_info=True,
            )
            retire()
            if not tries_left:
                raise
            continue
        return pid, template
    raise AssertionError("unreachable")


def _living(orphans: Orphans) -> Template:
    """This process's template, started (as a process that is not the attempt's) if
    there is none or it died."""
    global _template
    if _template is not None and (
        _template.owner != os.getpid() or _template.dead or _template.process.poll() is not None
    ):
        retire()
    if _template is None:
        _template = Template()
        orphans.keep(_template.process.pid)
    return _template


def replace_if_worn() -> None:
    """After an attempt: a template that forked ``ISOLATION_TEMPLATE_FORKS`` children is
    replaced by a fresh one, which sets up while the worker waits for its next message."""
    global _template
    if _template is not None and (
        _template.dead or _template.forks >= get_settings().ISOLATION_TEMPLATE_FORKS
    ):
        retire()
        try:
            _template = Template()
        except OSError:  # the next attempt starts one
            logger.warning("batchtasks could not start a template", exc_info=True)


def retire() -> None:
    """End this process's template (one inherited from another process is only let go)."""
    global _template
    template, _template = _template, None
    if template is not None and template.owner == os.getpid():
        template.close()
