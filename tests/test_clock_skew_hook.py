"""plugins/clockskew, the chaos workers' wall clock off by an offset (the clock_skew
scenario): a Python started with it shifts time.time, datetime's now and Django's
timezone.now by the offset file's seconds, and leaves the monotonic clock alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "plugins" / "clockskew"

# What the child reports: its clocks, each read once, in the order the bracket expects.
CHILD = """
import json, pickle, time, datetime, _datetime
from django.conf import settings
settings.configure(USE_TZ=True)
from django.utils import timezone
print(json.dumps({
    "monotonic": time.monotonic(),
    "time": time.time(),
    "time_ns": time.time_ns() / 1e9,
    "now": datetime.datetime.now().timestamp(),
    "utcnow": datetime.datetime.utcnow().replace(tzinfo=datetime.timezone.utc).timestamp(),
    "today": datetime.date.today().isoformat(),
    "django": timezone.now().timestamp(),
    "real_is_datetime": isinstance(_datetime.datetime(2026, 1, 1), datetime.datetime),
    "real_is_date": isinstance(_datetime.datetime(2026, 1, 1), datetime.date),
    "pickled": [
        str(pickle.loads(pickle.dumps(value)))
        for value in (_datetime.datetime(2026, 1, 1), _datetime.date(2026, 1, 1))
    ],
}))
"""

WALL = ("time", "time_ns", "now", "utcnow", "django")


Clocks = dict[str, float]


def clocks_with_hook(offset_file: Path) -> tuple[Clocks, Clocks, Clocks]:
    """The child's readings, and this process's wall and monotonic clocks before and after
    the child ran (its readings must fall between them, shifted by the offset)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HOOK), str(ROOT)]),
        "BATCHTASKS_CLOCK_OFFSET_FILE": str(offset_file),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    before = {"wall": time.time(), "monotonic": time.monotonic()}
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    )
    after = {"wall": time.time(), "monotonic": time.monotonic()}
    child: Clocks = json.loads(out.stdout)
    return child, before, after


@pytest.mark.parametrize("offset", [3600.0, -3600.0, 0.0])
def test_the_wall_clocks_are_off_by_the_file_s_seconds_the_monotonic_one_is_not(
    tmp_path: Path, offset: float
) -> None:
    offset_file = tmp_path / "offset"
    if offset:
        offset_file.write_text(f"{offset:+g}\n")
    child, before, after = clocks_with_hook(offset_file)
    for name in WALL:
        # A millisecond's slack: datetime has microseconds only, time_ns / 1e9 rounds.
        assert before["wall"] + offset - 1e-3 <= child[name] <= after["wall"] + offset + 1e-3, name
    assert before["monotonic"] <= child["monotonic"] <= after["monotonic"]
    days = {
        (datetime.fromtimestamp(t) + timedelta(seconds=offset)).date().isoformat()
        for t in (before["wall"], after["wall"])
    }
    assert child["today"] in days
    assert child["real_is_datetime"] and child["real_is_date"]
    # Celery's prefork pool pickles what it hands its processes; psycopg makes real ones.
    assert child["pickled"] == ["2026-01-01 00:00:00", "2026-01-01"]
