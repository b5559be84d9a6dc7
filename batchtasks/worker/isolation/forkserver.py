"""The pool process's side of the template (``template``): a forkserver per pool process.

A pool process starts its template when it starts, if the worker has ``process`` types
(``start``; else the first time it runs a ``process`` attempt), and waits for it before
it takes any work: no attempt pays Django's setup within its time limits. It asks for
each attempt's child ahead of the attempt (``Template.request``): at its start and right
after each attempt, so the fork and the child's own setup (session, environment,
signals) happen while the worker waits for its next message, and an attempt that comes
writes its start line to a child that is already waiting for it (``Template.take``; a
spare forked with another environment or working directory than the pool process has
then is ended and forked again). It replaces the template after
``ISOLATION_TEMPLATE_FORKS`` forks (right after the attempt, so the new one sets up
while the worker waits for its next message) and when it is found dead (the attempt at
hand asks the new one: no attempt is lost to a template's death). Code or settings that
change come with a worker restart, which ends the pool processes and, with them, their
templates and spare children (the end of its socket ends a template, the end of its
stdin a spare child).

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
from typing import Any, BinaryIO

from django.conf import settings

from ...core.conf import get_settings
from ...core.registry import registry
from ...core.states import Isolation
from .reaper import Orphans
from .template import RELEASE, TEMPLATE_FD_ENV

logger = logging.getLogger(__name__)

TEMPLATE_MODULE = "batchtasks.worker.isolation.template"
#: Seconds to wait for a template's answer (the first one includes Django's setup).
ANSWER_SECONDS = 60.0
#: Exit code of a child whose pid could not be waited for (it was not re-parented).
UNKNOWN_EXIT = 255
#: Seconds a pool process's start leaves before Celery's ``worker_proc_alive_timeout``.
BOOT_MARGIN = 1.0


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


class _Spare:
    """A child asked for before its attempt: the pool process's ends of its pipes, and
    the environment and working directory it was forked with."""

    def __init__(self, stdin: int, events: int, place: tuple[dict[str, str], str]) -> None:
        self.stdin = stdin
        self.events = events
        self.place = place
        #: Its pid, once the template answered (``None``: not read yet).
        self.pid: int | None = None

    def close(self) -> None:
        """Let it go: the end of its stdin ends it (it waits for its attempt there)."""
        for fd in (self.stdin, self.events):
            with contextlib.suppress(OSError):
                os.close(fd)


def _place() -> tuple[dict[str, str], str]:
    """The environment and working directory a child gets (the pool process's now)."""
    return {**os.environ, "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE}, os.getcwd()


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
        #: The next attempt's child, asked for ahead of it (``request``).
        self.spare: _Spare | None = None

    def request(self) -> None:
        """Ask for the next attempt's child now: the template forks it (after its own
        setup, the first time) and the child waits on its stdin for the attempt, so
        neither is on the way of the attempt when it comes (``take``)."""
        assert self.spare is None
        stdin_read, stdin_write = os.pipe()
        events_read, events_write = os.pipe()
        place = _place()
        request = json.dumps({"env": place[0], "cwd": place[1]}).encode()
        try:
            socket.send_fds(self.socket, [request], [stdin_read, events_write])
        except BaseException:
            os.close(stdin_write)
            os.close(events_read)
            self.dead = True
            raise
        finally:
            os.close(stdin_read)
            os.close(events_write)
        self.forks += 1
        self.spare = _Spare(stdin_write, events_read, place)

    def ready(self, timeout: float) -> bool:
        """Whether the spare child was forked (its pid came), waiting ``timeout`` seconds
        at most; ``OSError`` if the template failed."""
        assert self.spare is not None
        if self.spare.pid is None:
            if not select.select([self.socket], [], [], timeout)[0]:
                return False
            self.spare.pid = self._pid()
        return True

    def take(self) -> tuple[Forked, int]:
        """The spare child for the attempt at hand, and the read end of its event pipe
        (one forked with another environment or working directory is replaced)."""
        try:
            if self.spare is not None and self.spare.place != _place():
                self._drop_spare()
            if self.spare is None:
                self.request()
            if not self.ready(ANSWER_SECONDS):
                raise TimeoutError(f"the template gave no answer in {ANSWER_SECONDS} s")
        except BaseException:
            # Its answers are out of step now (Celery's soft limit can strike here too).
            self.dead = True
            raise
        spare, self.spare = self.spare, None
        assert spare is not None and spare.pid is not None
        return Forked(spare.pid, os.fdopen(spare.stdin, "wb"), self), spare.events

    def _answer(self, timeout: float = 0.0) -> dict[str, Any]:
        """The template's next answer, waiting ``timeout`` seconds at most for it."""
        if timeout and not select.select([self.socket], [], [], timeout)[0]:
            raise TimeoutError(f"the template gave no answer in {timeout} s")
        answer = self.socket.recv(4096)
        if not answer:
            raise ConnectionError(f"the template pid={self.process.pid} exited")
        reply: dict[str, Any] = json.loads(answer)
        if "error" in reply:
            raise OSError(f"the template could not fork: {reply['error']}")
        return reply

    def _pid(self) -> int:
        return int(self._answer()["pid"])

    def _drop_spare(self) -> None:
        """End the spare child (the end of its stdin), take the template's word that it
        exited, and let the template reap it."""
        spare, self.spare = self.spare, None
        assert spare is not None
        spare.close()
        if spare.pid is None:
            self._answer(ANSWER_SECONDS)
        self._answer(ANSWER_SECONDS)  # its exit
        self.socket.send(RELEASE)

    def close(self) -> None:
        if self.spare is not None:
            self.spare.close()
            self.spare = None
        self.socket.close()
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()


_template: Template | None = None


def enabled() -> bool:
    """Whether children come from a template (``ISOLATION_TEMPLATE_FORKS`` > 0)."""
    return get_settings().ISOLATION_TEMPLATE_FORKS > 0


def fork(orphans: Orphans) -> tuple[Forked, int]:
    """The attempt's child (the spare one, forked ahead) and the read end of its event
    pipe; a dead template is replaced once (``OSError`` if the new one fails too)."""
    for tries_left in (1, 0):
        template = _living(orphans)
        try:
            return template.take()
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


def prepare(wait: float = 0.0) -> None:
    """Between attempts: a template that forked ``ISOLATION_TEMPLATE_FORKS`` children (or
    died) is replaced, and the next attempt's child is asked for, so the template's setup
    and the fork happen while the worker waits for its next message. ``wait``: seconds
    to wait at most for that child (a pool process's start: see ``start``)."""
    global _template
    limit = get_settings().ISOLATION_TEMPLATE_FORKS
    if _template is not None and (
        _template.owner != os.getpid()
        or _template.dead
        or (_template.spare is None and _template.forks >= limit)
        or _template.process.poll() is not None
    ):
        retire()
    try:
        if _template is None:
            _template = Template()
        if _template.spare is None:
            _template.request()
        if wait > 0 and not _template.ready(wait):
            logger.warning(
                "batchtasks template not set up after %.1f s pid=%s: the first attempt waits",
                wait,
                _template.process.pid,
            )
    except OSError:  # the next attempt starts one
        logger.warning("batchtasks could not start a template", exc_info=True)
        retire()


def start() -> None:
    """A pool process's start: when this worker serves ``process`` types, its template sets
    up and forks the first attempt's child before the pool process takes any work, so no
    attempt pays the setup within its time limits. Celery kills a pool process that is
    not up within ``worker_proc_alive_timeout`` (4 s by default): the wait stops before."""
    if not enabled() or not _has_process_types():
        return
    from celery import current_app

    alive_timeout = float(current_app.conf.worker_proc_alive_timeout or 4.0)
    prepare(wait=max(alive_timeout - BOOT_MARGIN, 0.0))


def _has_process_types() -> bool:
    """Whether this worker consumes the queue of a type whose code (or settings) declare
    ``isolation="process"``; a worker of other queues starts no template."""
    from celery import current_app

    consumed = set(current_app.amqp.queues.consume_from or ())
    types = get_settings().TYPES
    for spec in registry:
        values = spec.definition_values(types.get(spec.name))
        if values["isolation"] == Isolation.PROCESS and values["queue"] in consumed:
            return True
    return False


def retire() -> None:
    """End this process's template (one inherited from another process is only let go)."""
    global _template
    template, _template = _template, None
    if template is not None and template.owner == os.getpid():
        template.close()
