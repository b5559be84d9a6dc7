"""imaging.thumbnail: its program on its own, then the task type run by a real worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from batchtasks import BatchTask, TaskState
from plugins.imaging import PROGRAM
from tests.workers import wait_for

FINAL = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)


def run_program(
    media: Path | None, params: Any, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """Start the program as a worker does: an empty working folder, only its variable."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, str(PROGRAM)],
        input=params if isinstance(params, str) else json.dumps(params),
        env={"DJANGO_MEDIA_ROOT": str(media)} if media else {},
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def result_data(stdout: str) -> dict[str, Any]:
    (line,) = [line for line in stdout.splitlines() if line.startswith("ResultData: ")]
    return json.loads(line.removeprefix("ResultData: "))


def opened(path: Path) -> Image.Image:
    """The file as a PNG Pillow has checked from end to end."""
    with Image.open(path) as check:
        check.verify()
    image = Image.open(path)
    assert image.format == "PNG"
    return image


@pytest.fixture
def media(tmp_path: Path) -> Path:
    path = tmp_path / "media"
    (path / "photos").mkdir(parents=True)
    return path


def test_thumbnails_fit_their_boxes_and_keep_the_proportions(media: Path, tmp_path: Path) -> None:
    Image.new("RGB", (640, 480), "red").save(media / "photos" / "cat.jpg")

    done = run_program(
        media, {"image": "photos/cat.jpg", "sizes": [[128, 128], [64, 32]]}, tmp_path
    )

    assert done.returncode == 0, done.stdout + done.stderr
    paths = result_data(done.stdout)["thumbnails"]
    assert paths == [
        "batchtasks/thumbnails/photos/cat-128x128.png",
        "batchtasks/thumbnails/photos/cat-64x32.png",
    ]
    big, small = (opened(media / p) for p in paths)
    assert big.size == (128, 96)
    assert small.size in {(42, 32), (43, 32)}
    assert big.getpixel((64, 48))[0] > 240, "still red"
    progress = [line for line in done.stdout.splitlines() if line.startswith("Progress: ")]
    assert progress == [
        "Progress: 0 photos/cat.jpg: 640x480",
        "Progress: 50 128x128 written",
        "Progress: 100 64x32 written",
    ]
    leftovers = [p.name for p in (media / "batchtasks" / "thumbnails" / "photos").iterdir()]
    assert sorted(leftovers) == ["cat-128x128.png", "cat-64x32.png"], "no temporary files"


def test_a_photo_taken_sideways_gets_an_upright_thumbnail(media: Path, tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; show it rotated 90°
    Image.new("RGB", (200, 100), "blue").save(media / "photos" / "tall.jpg", exif=exif)

    done = run_program(media, {"image": "photos/tall.jpg", "sizes": [[64, 64]]}, tmp_path)

    assert done.returncode == 0, done.stdout
    assert opened(media / result_data(done.stdout)["thumbnails"][0]).size == (32, 64)


def test_transparency_survives_and_odd_modes_are_converted(media: Path, tmp_path: Path) -> None:
    clear = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    clear.paste((0, 255, 0, 255), (0, 0, 50, 100))
    clear.save(media / "logo.png")
    Image.new("CMYK", (100, 50), (0, 255, 255, 0)).save(media / "print.jpg")

    logo = run_program(media, {"image": "logo.png", "sizes": [[10, 10]]}, tmp_path)
    printed = run_program(media, {"image": "print.jpg", "sizes": [[10, 10]]}, tmp_path)

    assert logo.returncode == printed.returncode == 0, logo.stdout + printed.stdout
    thumb = opened(media / "batchtasks/thumbnails/logo-10x10.png")
    assert thumb.mode == "RGBA" and thumb.getpixel((9, 5))[3] == 0
    assert thumb.getpixel((0, 5)) == (0, 255, 0, 255)
    assert opened(media / "batchtasks/thumbnails/print-10x10.png").mode == "RGB"


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"image": "photos/nosuch.png"}, "image 'photos/nosuch.png' does not exist"),
        ({"image": "../secret.png"}, "must be a path inside the media folder"),
        ({"image": "photos/../../secret.png"}, "must be a path inside the media folder"),
        ({"image": "/etc/hostname"}, "must be a path inside the media folder"),
        ({"image": "photos/link.png"}, "must be a path inside the media folder"),
        ({"image": "photos/notes.png"}, "is not an image this program can read"),
        ({"image": "photos/ok.png", "sizes": [[0, 10]]}, "sizes[0]=[0, 10] must be"),
        ({"image": "photos/ok.png", "sizes": "big"}, "sizes must be a list"),
        ({"image": "photos/ok.png", "format": "gif"}, "unknown parameter(s) ['format']"),
        ("{not json", "the parameters on stdin are not JSON"),
    ],
)
def test_bad_input_is_an_error_that_says_why_and_writes_nothing(
    media: Path, tmp_path: Path, params: Any, says: str
) -> None:
    Image.new("RGB", (10, 10)).save(tmp_path / "secret.png")
    Image.new("RGB", (10, 10)).save(media / "photos" / "ok.png")
    (media / "photos" / "link.png").symlink_to(tmp_path / "secret.png")
    (media / "photos" / "notes.png").write_text("not a picture")

    done = run_program(media, params, tmp_path)

    assert done.returncode == 2
    assert done.stdout.startswith("ERROR: ") and says in done.stdout.splitlines()[0]
    assert "ResultData" not in done.stdout
    assert not (media / "batchtasks").exists()


def test_without_a_media_folder_the_program_refuses_to_start(tmp_path: Path) -> None:
    done = run_program(None, {"image": "a.png"}, tmp_path)

    assert (done.returncode, done.stdout) == (
        2,
        "ERROR: DJANGO_MEDIA_ROOT is not set, so the media folder is unknown.\n",
    )


def test_an_image_too_large_to_open_safely_is_refused(media: Path, tmp_path: Path) -> None:
    # Just past Pillow's MAX_IMAGE_PIXELS, where it would only warn; one bit a pixel
    # keeps the file small.
    Image.new("1", (9500, 9500)).save(media / "bomb.png")

    done = run_program(media, {"image": "bomb.png"}, tmp_path)

    assert done.returncode == 2
    assert done.stdout.startswith("ERROR: image 'bomb.png' is too large to make thumbnails of.")


def test_an_unexpected_failure_exits_1_with_the_traceback(media: Path, tmp_path: Path) -> None:
    Image.new("RGB", (10, 10)).save(media / "ok.png")
    (media / "batchtasks").write_text("a file where the thumbnails folder should be")

    done = run_program(media, {"image": "ok.png"}, tmp_path)

    assert done.returncode == 1
    lines = done.stdout.splitlines()
    first, *details = lines[[line.startswith("ERROR: ") for line in lines].index(True) :]
    assert first.startswith("ERROR: making thumbnails failed: ")
    assert details[0] == "Traceback (most recent call last):"


@pytest.mark.worker
def test_a_worker_runs_the_program_and_stores_the_thumbnail_paths(
    start_worker, media_root: Path
) -> None:
    (media_root / "uploads").mkdir()
    Image.new("RGB", (300, 200), "green").save(media_root / "uploads" / "dog.png")
    start_worker(queues=["batch.imaging"])
    good = BatchTask.submit("imaging.thumbnail", {"image": "uploads/dog.png", "sizes": [[90, 90]]})
    bad = BatchTask.submit("imaging.thumbnail", {"image": "../dog.png"})

    wait_for(
        lambda: BatchTask.objects.filter(pk__in=[good.pk, bad.pk], state__in=FINAL).count() == 2
    )

    good.refresh_from_db()
    bad.refresh_from_db()
    assert good.state == TaskState.SUCCEEDED, good.error
    assert good.result == {"thumbnails": ["batchtasks/thumbnails/uploads/dog-90x90.png"]}
    assert opened(media_root / good.result["thumbnails"][0]).size == (90, 60)
    assert good.progress_percent == 100
    assert bad.state == TaskState.FAILED
    assert "must be a path inside the media folder" in bad.error.message
