"""The template of process-isolated runs: ``python -m batchtasks.worker.isolation.template``.

A pool process starts one (``forkserver``) when it starts (or the first time it runs a
``process`` attempt).
It sets Django up and imports the plugins once, closes every database connection, starts
no thread, and then waits on a Unix socket (``SOCK_SEQPACKET``, its fd named by
``BATCHTASKS_TEMPLATE_FD``) for requests: one JSON object (the pool process's environment
and working directory for this attempt) with two fds attached (``SCM_RIGHTS``), the read
end of the child's stdin and the write end of its event pipe. For each it forks the
child and answers ``{"pid": …}`` (or ``{"error": …}``), waits for the child to end and
answers ``{"exit": returncode}``. The pool process asks for a child ahead of its
attempt (the child waits for it on stdin), and for one at a time, so the template has
nothing else to do meanwhile. The child stays a zombie until the pool
process says ``release`` (or sends the next request, or closes the socket): while its
supervisor finishes the attempt, the child's process group id cannot be taken by
another process.

The child starts its own session (its process group is the attempt's), puts the stdin
fd on fd 0, takes the attempt's environment and working directory, unblocks signals and
installs the handlers a fresh child has (``child.install_signals``), and then runs as a
spawned child does after its setup (``child.serve``). ``random`` reseeds itself in a
forked child (CPython's at-fork hook); the template opened no database connection, so
the child's first query opens its own. The end of the socket (the pool process is gone
or replaced its template) ends the template; children already forked run on, each with
its own stdin.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import sys
import traceback
from typing import Any

TEMPLATE_FD_ENV = "BATCHTASKS_TEMPLATE_FD"
#: Largest request (the environment of the pool process is most of it).
MAX_REQUEST = 1024 * 1024
#: The pool process's word that it is done with the last child (its zombie is reaped).
RELEASE = b"release"
#: Exit code of a forked child whose setup failed before it could report anything.
SETUP_FAILED = 70


def main() -> None:
    """Set up, then fork a child per request until the pool process closes the socket."""
    control = socket.socket(fileno=int(os.environ.pop(TEMPLATE_FD_ENV)))
    import django

    django.setup()
    _preload()
    from django.db import connections

    # The children must not share a connection's socket: none is open when they fork.
    connections.close_all()
    sys.stdout.flush()
    sys.stderr.flush()
    # What the setup made stays shared with the children: the collector leaves it alone.
    gc.freeze()
    serve(control)


def _preload() -> None:
    """Import what every child needs, once (the plugins came with ``django.setup``)."""
    import celery.exceptions  # noqa: F401

    import batchtasks.core.codecs
    import batchtasks.core.retries
    import batchtasks.models
    import batchtasks.worker.isolation.child
    import batchtasks.worker.isolation.results  # noqa: F401


def serve(control: socket.socket) -> None:
    child = 0
    while True:
        try:
            message, fds, _flags, _address = socket.recv_fds(control, MAX_REQUEST, 2)
        except OSError:
            message, fds = b"", []
        if child:  # the last child, kept a zombie until now (see the module text)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child, 0)
            child = 0
        if not message:  # the pool process closed its end, or is gone
            break
        if message == RELEASE:
            continue
        try:
            child = fork(json.loads(message), fds, control)
            answer: dict[str, Any] = {"pid": child}
        except (OSError, ValueError) as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        try:
            control.send(json.dumps(answer).encode())
            if child:
                control.send(json.dumps({"exit": exit_code(child)}).encode())
        except OSError:
            break
    os._exit(0)


def fork(request: dict[str, Any], fds: list[int], control: socket.socket) -> int:
    """Fork the attempt's child and return its pid."""
    if len(fds) != 2:
        raise ValueError(f"a request carries 2 fds, not {len(fds)}")
    pid = os.fork()
    if pid == 0:
        _become_child(request, fds, control)
    return pid


def exit_code(pid: int) -> int:
    """Wait for the child to end and say how, as ``Popen.returncode`` does (negative: the
    signal that killed it); it stays a zombie, its pid and process group reserved."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    assert info is not None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _become_child(request: dict[str, Any], fds: list[int], control: socket.socket) -> None:
    """Turn this fork of the template into the attempt's child, and run it (never returns)."""
    try:
        from . import child

        control.close()
        os.setsid()
        stdin, events = fds
        os.dup2(stdin, 0)
        os.close(stdin)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        child.install_signals()
    except BaseException:
        traceback.print_exc()
        os._exit(SETUP_FAILED)
    child.serve(events)


if __name__ == "__main__":
    main()
