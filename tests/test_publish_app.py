"""The app batchtasks publishes with: a process that never imported the project's Celery
app publishes with Celery's fallback app, which knows none of its CELERY_* settings
(a key prefix, say: its messages went where no worker looked until the sweeper published
them again). batchtasks says so."""

from __future__ import annotations

import logging

import pytest
from celery import Celery, current_app

from batchtasks.transport.publish import warn_if_fallback


def test_celerys_fallback_app_is_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    fallback = Celery("default", fixups=[], set_as_current=False)
    with caplog.at_level(logging.WARNING, logger="batchtasks.transport.publish"):
        assert warn_if_fallback(fallback)
    assert "fallback app" in caplog.text
    assert "from .celery import app as celery_app" in caplog.text


def test_a_project_app_passes_quietly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="batchtasks.transport.publish"):
        assert not warn_if_fallback(current_app._get_current_object())
        assert not warn_if_fallback(Celery("default", set_as_current=False))  # named so
    assert caplog.text == ""
