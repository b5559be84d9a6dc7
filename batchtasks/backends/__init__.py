"""Backends that let other task frameworks run on batchtasks: Django's ``django.tasks``."""

from __future__ import annotations

from .django_tasks import BatchTaskContext, BatchTasksBackend

__all__ = ["BatchTaskContext", "BatchTasksBackend"]
