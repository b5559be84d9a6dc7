"""Reports that do real work: exports written to the media folder."""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model

from batchtasks import BatchTaskPlugin, Priority, batchtask

COLUMNS = ("id", "username", "email", "first_name", "last_name", "is_active", "date_joined")
CHUNK = 500
#: Who may export the users (over HTTP, and download the file): the file holds every
#: user's name and email, which the admin shows only to those with this permission too.
EXPORT_PERMISSION = "auth.view_user"


@batchtask(
    "reports.users_csv",
    queue="batch.reports",
    max_concurrency=2,
    timeout=600,
    priority=Priority.NORMAL,
    description="Export users as CSV",
    web=EXPORT_PERMISSION,
    # A report's memory grows with its data: in a child process of its own, a runaway
    # export costs its task, never the worker.
    isolation="process",
    memory_limit=1024**3,
    inactivity_timeout=120,
)
class UsersCsv(BatchTaskPlugin):
    """Write the users (optionally only active ones) to a CSV file under MEDIA_ROOT."""

    @dataclass
    class Params:
        #: Only active (true) or only inactive (false) users; all when absent or null.
        active: bool | None = None

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        users = get_user_model().objects.order_by("pk")
        if params.get("active") is not None:
            users = users.filter(is_active=params["active"])
        total = users.count()
        folder = Path(settings.MEDIA_ROOT) / "batchtasks" / "reports"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"users-{self.task_id or 'local'}.csv"
        # Written to a temporary file and renamed: a cancelled or crashed export leaves
        # no half-written report behind.
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".users-", suffix=".csv")
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
                rows = self._write(csv.writer(fh), users, total)
            os.replace(tmp, folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        relative = f"batchtasks/reports/{name}"
        return {"rows": rows, "path": relative, "url": settings.MEDIA_URL + relative}

    def _write(self, writer: Any, users: Any, total: int) -> int:
        writer.writerow(COLUMNS)
        rows = 0
        for user in users.iterator(chunk_size=CHUNK):
            writer.writerow([getattr(user, column, "") for column in COLUMNS])
            rows += 1
            if rows % CHUNK == 0:
                self.check_cancelled()
                self.progress(100 * rows / max(total, 1), f"{rows} of {total} users")
        self.progress(100, f"{rows} users written")
        return rows
