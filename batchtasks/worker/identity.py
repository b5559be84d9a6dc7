"""Who this worker is: a per-boot instance id, known to its main process and to every
pool process it starts (forked or spawned), and where stop requests are left for them."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import tempfile
import uuid
from pathlib import Path

import psutil

from ..core.exceptions import UnsafeStopFolder
from ..db.connections import use_dedicated_connections
from ..services.workers import Identity, process_space

INSTANCE_ENV = "BATCHTASKS_WORKER_INSTANCE"
NAME_ENV = "BATCHTASKS_WORKER_NAME"
STOP_DIR_ENV = "BATCHTASKS_STOP_DIR"

_identity: Identity | None = None


def boot(name: str) -> Identity:
    """Start a new boot of worker ``name`` in its main process, before the pool starts:
    a fresh instance id, dedicated state connections, a folder for stop requests.

    An unsafe stop folder ends the process (``SystemExit``): Celery logs and ignores an
    exception raised in ``worker_init``, and the worker would run without its agent.
    """
    global _identity
    booted = Identity(
        name=name,
        instance=uuid.uuid4().hex,
        pid=os.getpid(),
        process_space=process_space(),
        process_started=psutil.Process().create_time(),
    )
    try:
        folder = _stop_dir(booted)
    except UnsafeStopFolder as exc:
        raise SystemExit(f"batchtasks: {exc}") from exc
    _identity = booted
    # The environment reaches pool processes however they start (fork or spawn).
    os.environ[INSTANCE_ENV] = booted.instance
    os.environ[NAME_ENV] = name
    os.environ[STOP_DIR_ENV] = folder
    use_dedicated_connections(True)
    return booted


def _private_parent() -> Path:
    """``<tmp>/batchtasks-stop-<uid>``, made mode 0700, or ``UnsafeStopFolder`` when it
    exists and is anything but a folder of this user that no one else may use: a pool
    process stops its run on a request found there, and the cleanup deletes in it."""
    parent = Path(tempfile.gettempdir(), f"batchtasks-stop-{os.getuid()}")
    try:
        os.mkdir(parent, 0o700)
        os.chmod(parent, 0o700)  # whatever the umask
    except FileExistsError:
        pass
    info = os.lstat(parent)  # a link planted there is refused, not followed
    unsafe = _unsafe(info, shlex.quote(str(parent)))
    if unsafe is not None:
        problem, fix = unsafe
        raise UnsafeStopFolder(
            f"the stop folder {str(parent)!r} {problem}; another user could leave stop "
            f"requests in it. Fix: {fix}, or set TMPDIR to a folder of this user's own; "
            "then start the worker again."
        )
    return parent


def _unsafe(info: os.stat_result, path: str) -> tuple[str, str] | None:
    """What makes an existing stop folder unsafe and how to fix it (``None``: nothing)."""
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link", f"remove it (rm {path})"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a folder", f"remove it (rm {path})"
    if info.st_uid != os.getuid():
        return (
            f"belongs to uid {info.st_uid}, not to this worker's uid {os.getuid()}",
            f"remove it as its owner or root (rm -r {path})",
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return (
            f"has mode {mode:04o}: its group or others may use it",
            f"make it private (chmod 700 {path}) or remove it (rm -r {path})",
        )
    return None


def _stop_dir(booted: Identity) -> str:
    """A private folder for this boot's stop requests; folders of boots whose process is
    gone (killed workers never remove theirs) are removed."""
    parent = _private_parent()
    for old in parent.iterdir():
        pid = old.name.partition("-")[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    folder = parent / f"{booted.pid}-{booted.instance}"
    folder.mkdir(mode=0o700)
    return str(folder)


def shut_down() -> None:
    """Remove this boot's stop folder (main process, at shutdown)."""
    folder = os.environ.pop(STOP_DIR_ENV, "")
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def current() -> Identity:
    """This boot's identity (main process, after ``boot``)."""
    if _identity is None:
        raise RuntimeError("batchtasks: the worker has not booted (worker_init not seen).")
    return _identity


def instance() -> str:
    """This worker boot's instance id; a process-local one outside a worker."""
    if _identity is not None:
        return _identity.instance
    value = os.environ.get(INSTANCE_ENV)
    if not value:
        value = os.environ[INSTANCE_ENV] = uuid.uuid4().hex
    return value


def stop_dir() -> str:
    """Where the main process leaves stop requests for its pool processes ('' if none)."""
    return os.environ.get(STOP_DIR_ENV, "")
