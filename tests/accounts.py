"""Users of the API tests: ``make_user`` and HTTP Basic headers (their fixtures, ``alice``,
``bob`` and ``api``, are in tests/conftest.py)."""

from __future__ import annotations

import base64
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission


def make_user(username: str, *perms: str, staff: bool = False, active: bool = True) -> Any:
    """A user whose password is ``pw-<username>``, with ``perms`` ("app.codename")."""
    user = get_user_model().objects.create_user(
        username, password=f"pw-{username}", is_staff=staff, is_active=active
    )
    for perm in perms:
        user.user_permissions.add(Permission.objects.get(codename=perm.split(".")[1]))
    return user


def basic(user: Any, password: str | None = None) -> dict[str, str]:
    """Headers with the user's HTTP Basic credentials."""
    secret = f"{user.username}:{password or 'pw-' + user.username}".encode()
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(secret).decode()}
