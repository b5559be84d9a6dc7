"""imaging.thumbnail's program: PNG thumbnails of an image in the media folder.

A plain program, no Django: ``python plugins/executors/thumbnail.py`` (or ``-m
plugins.executors.thumbnail``) reads its parameters as JSON on stdin,

    {"image": "<path relative to the media folder>", "sizes": [[128, 128], [64, 64]]}

and the media folder from the environment variable ``DJANGO_MEDIA_ROOT`` (the worker
passes its ``MEDIA_ROOT`` setting; nothing else is assumed). Each thumbnail keeps the
image's proportions within its box and is written, whole or not at all, to
``batchtasks/thumbnails/<folder of the image>/<stem>-<w>x<h>.png`` in the media folder.

On stdout: ``Progress: <percent> <message>`` after each size, then
``ResultData: {"thumbnails": [<paths relative to the media folder>]}``. On error:
``ERROR: <message>`` and lines of detail; exit status 2 for parameters or an image it
cannot use (no retry helps), 1 for anything else.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
import warnings
from pathlib import Path, PurePosixPath
from typing import IO, Any

from PIL import Image, ImageOps, UnidentifiedImageError

PARAMS = ("image", "sizes")
DEFAULT_SIZES = [[128, 128]]
MAX_SIDE = 4096
MAX_SIZES = 16
OUTPUT = PurePosixPath("batchtasks/thumbnails")
#: The modes a PNG stores as they are; any other is converted to RGB(A) first.
PNG_MODES = ("1", "L", "LA", "RGB", "RGBA")


class InputError(Exception):
    """Raised for parameters or an image this program cannot use (exit status 2)."""

    def __init__(self, message: str, *details: str) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


def say(line: str) -> None:
    """Write one protocol line at once: the worker reads stdout as it comes."""
    print(line, flush=True)


def media_root() -> Path:
    """The media folder, from ``DJANGO_MEDIA_ROOT``."""
    value = os.environ.get("DJANGO_MEDIA_ROOT", "")
    if not value:
        raise InputError("DJANGO_MEDIA_ROOT is not set, so the media folder is unknown.")
    root = Path(value).resolve()
    if not root.is_dir():
        raise InputError("DJANGO_MEDIA_ROOT is not a folder.")
    return root


def _size(index: int, value: Any) -> tuple[int, int]:
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and all(1 <= v <= MAX_SIDE for v in value)
    ):
        return value[0], value[1]
    raise InputError(
        f"sizes[{index}]={value!r} must be [width, height], each from 1 to {MAX_SIDE}."
    )


def read_params(stream: IO[str]) -> tuple[str, list[tuple[int, int]]]:
    """The image and the sizes asked for."""
    try:
        params = json.loads(stream.read() or "null")
    except json.JSONDecodeError as exc:
        raise InputError("the parameters on stdin are not JSON.", str(exc)) from None
    if not isinstance(params, dict):
        raise InputError(f"the parameters must be a JSON object, not {params!r}.")
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise InputError(f"unknown parameter(s) {unknown}; the parameters are image, sizes.")
    image = params.get("image")
    if not isinstance(image, str) or not image.strip():
        raise InputError(f"image={image!r} must be a path relative to the media folder.")
    sizes = params.get("sizes", DEFAULT_SIZES)
    if not isinstance(sizes, list) or not 1 <= len(sizes) <= MAX_SIZES:
        raise InputError(f"sizes must be a list of 1 to {MAX_SIZES} [width, height] pairs.")
    return image, [_size(i, size) for i, size in enumerate(sizes)]


def source_path(root: Path, image: str) -> Path:
    """The image's file, refusing any path that leads out of the media folder."""
    relative = PurePosixPath(image)
    outside = InputError(f"image {image!r} must be a path inside the media folder, relative to it.")
    if relative.is_absolute() or ".." in relative.parts or "\\" in image or "\0" in image:
        raise outside
    path = (root / relative).resolve()
    if not path.is_relative_to(root):  # a symbolic link that points out
        raise outside
    if not path.is_file():
        raise InputError(f"image {image!r} does not exist in the media folder.")
    return path


def open_image(path: Path, image: str) -> Image.Image:
    """The image, upright and in a mode PNG stores; a decompression bomb is refused."""
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse those too.
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    try:
        with Image.open(path) as opened:
            picture = ImageOps.exif_transpose(opened)
            picture.load()
    except UnidentifiedImageError:
        raise InputError(f"image {image!r} is not an image this program can read.") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"image {image!r} is too large to make thumbnails of.", str(exc)) from None
    if picture.mode not in PNG_MODES:
        picture = picture.convert("RGBA" if picture.has_transparency_data else "RGB")
    return picture


def thumbnail_name(image: str, width: int, height: int) -> PurePosixPath:
    """Where the thumbnail of ``image`` in a ``width`` x ``height`` box goes."""
    relative = PurePosixPath(image)
    return OUTPUT / relative.parent / f"{relative.stem}-{width}x{height}.png"


def write_thumbnail(picture: Image.Image, box: tuple[int, int], target: Path) -> None:
    """Write a thumbnail through a temporary file, so no half-written PNG is ever seen."""
    small = picture.copy()
    small.thumbnail(box, Image.Resampling.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as fh:
            small.save(fh, format="PNG", optimize=True)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_thumbnails(stdin: IO[str]) -> list[str]:
    """Do the work; return the thumbnails' paths relative to the media folder."""
    root = media_root()
    image, sizes = read_params(stdin)
    picture = open_image(source_path(root, image), image)
    say(f"Progress: 0 {image}: {picture.width}x{picture.height}")
    written = []
    for done, (width, height) in enumerate(sizes, 1):
        relative = thumbnail_name(image, width, height)
        write_thumbnail(picture, (width, height), root / relative)
        written.append(str(relative))
        say(f"Progress: {100 * done // len(sizes)} {width}x{height} written")
    return written


def error(message: str, details: list[str] | tuple[str, ...]) -> None:
    say(f"ERROR: {message}")
    for line in details:
        say(line)


def main() -> int:
    """Run as a program; return the exit status."""
    try:
        written = make_thumbnails(sys.stdin)
    except InputError as exc:
        error(exc.message, exc.details)
        return 2
    except Exception as exc:
        error(
            f"making thumbnails failed: {type(exc).__name__}: {exc}",
            traceback.format_exc().splitlines(),
        )
        return 1
    say("ResultData: " + json.dumps({"thumbnails": written}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
