"""The folder where a worker leaves stop requests for its pool processes: private to its
user (mode 0700), or the worker refuses to start and says how to fix it."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchtasks.core.exceptions import UnsafeStopFolder
from batchtasks.services.workers import Identity
from batchtasks.worker import identity
from tests.workers import Worker, wait_for


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary folder of the test's own instead of /tmp (where real workers keep theirs)."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.fixture
def umask() -> Iterator[None]:
    """A umask that would leave a new folder open to everyone."""
    old = os.umask(0)
    yield
    os.umask(old)


def parent(root: Path) -> Path:
    return root / f"batchtasks-stop-{os.getuid()}"


def boot() -> str:
    return identity._stop_dir(Identity("w@host", "a" * 32, os.getpid(), "", 0.0))


def test_a_new_stop_folder_is_private_whatever_the_umask(temp_root: Path, umask: None) -> None:
    folder = Path(boot())

    for made in (parent(temp_root), folder):
        info = made.lstat()
        assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
        assert stat.S_IMODE(info.st_mode) == 0o700
    assert folder.parent == parent(temp_root)


def test_a_private_folder_is_used_again_and_dead_boots_folders_are_removed(
    temp_root: Path,
) -> None:
    parent(temp_root).mkdir(mode=0o700)
    dead = parent(temp_root) / "999999999-dead"
    dead.mkdir()

    folder = Path(boot())

    assert folder.is_dir() and not dead.exists()


@pytest.mark.parametrize("mode", [0o755, 0o770, 0o701, 0o1777, 0o710])
def test_a_folder_that_others_may_enter_or_write_is_refused(temp_root: Path, mode: int) -> None:
    parent(temp_root).mkdir()
    parent(temp_root).chmod(mode)

    with pytest.raises(UnsafeStopFolder) as refused:
        boot()

    message = str(refused.value)
    assert repr(str(parent(temp_root))) in message
    assert f"mode {stat.S_IMODE(mode):04o}" in message
    assert "chmod 700" in message and "remove it" in message
    assert list(parent(temp_root).iterdir()) == []  # nothing made in it


def test_a_symbolic_link_is_refused_and_its_target_left_alone(temp_root: Path) -> None:
    target = temp_root / "elsewhere"
    target.mkdir(mode=0o700)
    (target / "999999999-looks-dead").mkdir()  # what the cleanup would otherwise delete
    parent(temp_root).symlink_to(target)

    with pytest.raises(UnsafeStopFolder, match="is a symbolic link") as refused:
        boot()

    assert "remove it" in str(refused.value)
    assert sorted(p.name for p in target.iterdir()) == ["999999999-looks-dead"]


def test_a_file_in_its_place_is_refused(temp_root: Path) -> None:
    parent(temp_root).write_text("")

    with pytest.raises(UnsafeStopFolder, match="is not a folder"):
        boot()


@pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another user needs root")
def test_a_folder_of_another_user_is_refused(temp_root: Path) -> None:
    parent(temp_root).mkdir(mode=0o700)
    os.chown(parent(temp_root), 65534, 65534)

    with pytest.raises(UnsafeStopFolder) as refused:
        boot()

    message = str(refused.value)
    assert f"belongs to uid 65534, not to this worker's uid {os.getuid()}" in message
    assert "remove it" in message


@pytest.mark.django_db(transaction=True)
def test_a_worker_refuses_to_start_on_an_open_stop_folder(tmp_path: Path) -> None:
    root = tmp_path / "tmp"
    parent(root).mkdir(parents=True)
    parent(root).chmod(0o777)
    worker = Worker("open", ["batch.examples.noop"], log_dir=tmp_path, env={"TMPDIR": str(root)})

    worker.start(wait=False)
    process = worker.process
    assert process is not None
    try:
        wait_for(lambda: process.poll() is not None or "ready." in worker.log(), timeout=120)
    finally:
        worker.kill()

    assert process.returncode not in (0, -9)
    assert f"batchtasks: the stop folder {str(parent(root))!r} has mode 0777" in worker.log()
    assert "ready." not in worker.log()
