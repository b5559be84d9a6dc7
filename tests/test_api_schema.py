"""Schemathesis against the live server: whatever it sends, the API answers no 5xx and
only what its own OpenAPI document says (statuses, content types, headers, bodies)."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse

from batchtasks import BatchTask

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
# Every check but the two that want the document to say exactly which inputs are refused:
# it cannot for the opaque cursor, and the API also takes comma lists and empty values.
EXCLUDED_CHECKS = "negative_data_rejection,positive_data_acceptance"
# Operations whose path holds a task id. A segment that is no number (``/tasks/x/``) does
# not match the route, so Django's own (HTML) 404 page answers it, outside the API: their
# path is fuzzed with valid ids only, their other inputs in every mode.
WITH_ID = r"\{id\}"


def schemathesis(url: str, username: str, tmp_path: Path, *options: str) -> str:
    """Run the schemathesis CLI as ``username``; its output, or a failed assertion showing it."""
    credentials = base64.b64encode(f"{username}:pw-{username}-1".encode()).decode()
    result = subprocess.run(
        [
            str(SCHEMATHESIS), "run", url,
            "--header", f"Authorization: Basic {credentials}",
            "--checks", "all", "--exclude-checks", EXCLUDED_CHECKS,
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", "25",
            "--request-timeout", "10",
            "--workers", "1",
            "--no-shrink",
            *options,
        ],
        check=False, capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-20_000:] + result.stderr[-5_000:]
    return result.stdout


@pytest.mark.django_db(transaction=True)
def test_schemathesis_finds_no_server_errors_and_no_drift_from_the_schema(
    live_server: Any, settings: Any, tmp_path: Path
) -> None:
    # Basic auth checks the password on every request; the default hasher takes ~0.3 s.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.ALLOWED_HOSTS = [urlsplit(live_server.url).hostname]
    users = get_user_model().objects
    user = users.create_user("fuzzer", password="pw-fuzzer-1")
    watcher = users.create_user("watcher", password="pw-watcher-1", is_staff=True)
    watcher.user_permissions.add(Permission.objects.get(codename="view_all_batchtasks"))
    # Something to find, cancel and retry at the lowest ids the fuzzer tries.
    for seconds in range(3):
        BatchTask.submit("examples.sleep", {"seconds": seconds}, owner=user)
    url = live_server.url + reverse("batchtasks:api-schema")

    rest = schemathesis(url, "fuzzer", tmp_path, "--exclude-path-regex", WITH_ID)
    by_id = schemathesis(
        url, "fuzzer", tmp_path, "--include-path-regex", WITH_ID, "--mode", "positive"
    )
    # owner= and all=, which only users who may see every user's tasks may use.
    everyone = schemathesis(url, "watcher", tmp_path, "--include-operation-id", "listTasks")

    print(rest, by_id, everyone)
    assert "4 selected / 7 total" in rest and "3 selected / 7 total" in by_id
    assert "1 selected / 7 total" in everyone
