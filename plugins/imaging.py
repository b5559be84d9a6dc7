"""imaging.thumbnail: PNG thumbnails made by an external program (an executor)."""

from __future__ import annotations

import sys
from pathlib import Path

from batchtasks import batchtask
from batchtasks.core.plugin import ExecutorPlugin

PROGRAM = Path(__file__).resolve().parent / "executors" / "thumbnail.py"


@batchtask(
    "imaging.thumbnail",
    isolation="executor",
    queue="batch.imaging",
    max_concurrency=2,
    timeout=300,
    # The program reports after each size; a minute of silence means it is stuck.
    inactivity_timeout=60,
    description="Thumbnails of an image in the media folder",
)
class Thumbnail(ExecutorPlugin):
    """PNG thumbnails of ``params["image"]`` (a path relative to MEDIA_ROOT), one for
    each ``[width, height]`` box in ``params["sizes"]`` (default ``[[128, 128]]``);
    the result is ``{"thumbnails": [paths relative to MEDIA_ROOT]}``. The program is
    ``plugins/executors/thumbnail.py``; its docstring has the details. Its memory is
    bounded by Pillow's decompression-bomb limit, which the program enforces."""

    # Started by its path, not with -m: an executor runs in an empty working folder
    # with only the environment declared below, where the project's packages are not
    # importable (and the program needs none of them, only Pillow).
    command = [sys.executable, str(PROGRAM)]
    environment = {"DJANGO_MEDIA_ROOT": "MEDIA_ROOT"}
