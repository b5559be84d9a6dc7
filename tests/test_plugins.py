"""The example plugins: the ones that do real work, who may start the users' export,
and the bounds of the demo types a request may start."""

from __future__ import annotations

import csv
import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from batchtasks import BatchTask, InvalidParameters, TaskState
from batchtasks.core.exceptions import TaskCancelled
from batchtasks.core.plugin import LocalContext
from batchtasks.core.registry import registry
from plugins.reports import UsersCsv
from tests.openapi import ApiClient

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


# --- who may export every user's name and email --------------------------------------------


def _user(username: str, *perms: str, staff: bool = False) -> Any:
    user = get_user_model().objects.create_user(username, is_staff=staff)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return get_user_model().objects.get(pk=user.pk)  # without cached permissions


def _export(client: Client, user: Any) -> Any:
    api = ApiClient(client)
    api.force_login(user)
    return api.post(reverse("batchtasks:api-tasks"), {"type": "reports.users_csv"})


@pytest.mark.parametrize(
    ("username", "perms", "staff"),
    [("plain", (), False), ("clerk", (), True), ("auditor", ("auth.view_user",), False)],
)
def test_exporting_users_over_http_needs_view_user(
    client: Client, username: str, perms: tuple[str, ...], staff: bool
) -> None:
    response = _export(client, _user(username, *perms, staff=staff))

    if perms:
        assert response.status_code == 201
        assert BatchTask.objects.get().type_name == "reports.users_csv"
    else:
        assert response.status_code == 403, response.content
        assert response.json()["type"] == "urn:batchtasks:problem:not-submittable"
        assert not BatchTask.objects.exists()


def test_the_home_page_shows_the_export_button_only_to_those_who_may_export(
    client: Client,
) -> None:
    client.force_login(_user("plain", staff=True))
    hidden = client.get(reverse("home")).content.decode()
    client.force_login(_user("auditor", "auth.view_user", staff=True))
    shown = client.get(reverse("home")).content.decode()

    assert 'id="export"' not in hidden and "auth.view_user" in hidden
    assert 'id="export"' in shown and "Export users as CSV" in shown


def test_an_export_is_not_handed_out_once_its_owner_may_no_longer_view_users(
    client: Client, settings: Any, tmp_path: Path
) -> None:
    settings.MEDIA_ROOT = tmp_path
    owner = _user("auditor", "auth.view_user")
    task = BatchTask.submit("reports.users_csv", {}, owner=owner)
    result = UsersCsv(LocalContext(task_id=task.pk)).run({})
    BatchTask.objects.filter(pk=task.pk).update(state=TaskState.SUCCEEDED, result=result)
    url = reverse("report-download", args=[task.pk])
    client.force_login(owner)

    handed_out = client.get(url)
    owner.user_permissions.clear()
    client.force_login(get_user_model().objects.get(pk=owner.pk))
    refused = client.get(url)

    assert handed_out.status_code == 200 and b"auditor" in b"".join(handed_out.streaming_content)
    assert refused.status_code == 403


# --- the demo types a request may start ----------------------------------------------------


def _web_types() -> list[Any]:
    return [s for s in registry if s.web and s.plugin.__module__.startswith("plugins.")]


def test_every_type_of_the_plugins_on_the_api_has_bounded_params_and_a_timeout() -> None:
    assert {s.name for s in _web_types()} == {
        "examples.fail",
        "examples.progress",
        "reports.users_csv",
    }
    for spec in _web_types():
        assert spec.definition_values()["timeout"] is not None, spec.name
        assert spec.plugin.Params is not None, spec.name
        hints = typing.get_type_hints(spec.plugin.Params)
        for field in dataclasses.fields(spec.plugin.Params):
            rule = field.metadata.get("batchtasks")
            if hints[field.name] in (int, float):
                assert rule.minimum is not None and rule.maximum is not None, field.name
            if hints[field.name] is str:
                assert rule.max_length is not None, field.name


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"delay": float("nan")}, "delay"),
        ({"delay": float("inf")}, "delay"),
        ({"delay": 1e308}, "delay"),
        ({"steps": 0}, "steps"),
        ({"silent_after": -1}, "silent_after"),
    ],
)
def test_progress_refuses_numbers_out_of_bounds_from_code_too(
    params: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidParameters) as refused:
        BatchTask.submit("examples.progress", params)

    assert list(refused.value.fields) == [field]
    assert not BatchTask.objects.exists()
