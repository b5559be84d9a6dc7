"""The example plugins that do real work."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from batchtasks.core.exceptions import TaskCancelled
from batchtasks.core.plugin import LocalContext
from plugins.reports import UsersCsv

pytestmark = pytest.mark.django_db


def test_users_csv_writes_every_matching_user(settings, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path
    users = get_user_model().objects
    for i in range(1203):
        users.create(username=f"user{i:04}", is_active=i % 3 != 0)
    context = LocalContext(task_id=99)

    result = UsersCsv(context).run({"active": True})

    path = tmp_path / result["path"]
    rows = list(csv.reader(path.open()))
    assert rows[0][:2] == ["id", "username"]
    assert len(rows) - 1 == result["rows"] == 802
    assert result["url"].endswith("batchtasks/reports/users-99.csv")
    assert context.progress[-1] == (100, "802 users written")
    assert len(context.progress) >= 2


def test_a_cancelled_export_leaves_no_file(settings, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path
    users = get_user_model().objects
    for i in range(600):
        users.create(username=f"u{i}")

    with pytest.raises(TaskCancelled):
        UsersCsv(LocalContext(task_id=5, cancelled=True)).run({})

    assert list((tmp_path / "batchtasks" / "reports").iterdir()) == []
