"""Who this worker is: a per-boot instance id, known to its main process and to every
pool process it starts (forked or spawned), and where stop requests are left for them."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import psutil

from ..db.connections import use_dedicated_connections
from ..services.workers import Identity, process_space

INSTANCE_ENV = "BATCHTASKS_WORKER_INSTANCE"
NAME_ENV = "BATCHTASKS_WORKER_NAME"
STOP_DIR_ENV = "BATCHTASKS_STOP_DIR"

_identity: Identity | None = None


def boot(name: str) -> Identity:
    """Start a new boot of worker ``name`` in its main process, before the pool starts:
    a fresh instance id, dedicated state connections, a folder for stop requests."""
    global _identity
    _identity = Identity(
        name=name,
        instance=uuid.uuid4().hex,
        pid=os.getpid(),
        process_space=process_space(),
        process_started=psutil.Process().create_time(),
    )
    # The environment reaches pool processes however they start (fork or spawn).
    os.environ[INSTANCE_ENV] = _identity.instance
    os.environ[NAME_ENV] = name
    os.environ[STOP_DIR_ENV] = _stop_dir(_identity)
    use_dedicated_connections(True)
    return _identity


def _stop_dir(booted: Identity) -> str:
    """A private folder for this boot's stop requests; folders of boots whose process is
    gone (killed workers never remove theirs) are removed."""
    parent = Path(tempfile.gettempdir(), f"batchtasks-stop-{os.getuid()}")
    parent.mkdir(mode=0o700, exist_ok=True)
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
