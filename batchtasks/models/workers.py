"""The workers serving batch queues, as their heartbeats describe them."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class WorkerState(models.TextChoices):
    """Whether a worker is heard from."""

    ONLINE = "online", _("Online")
    STOPPED = "stopped", _("Stopped")
    OFFLINE = "offline", _("Offline (heartbeat lost)")


class BatchWorker(models.Model):
    """One boot of a Celery worker serving batch queues, as its last heartbeat described it."""

    # Several rows may share a name: a worker restarted under its name gets a new row,
    # and two workers started with one name each hold only their own attempts.
    name = models.CharField(_("name"), max_length=200)
    instance = models.CharField(_("instance"), max_length=32, unique=True)
    host = models.CharField(_("host"), max_length=200)
    # Where ``pid`` means something: the kernel's boot id and pid namespace (Linux).
    process_space = models.CharField(_("process space"), max_length=100, blank=True)
    pid = models.PositiveIntegerField(_("pid"))
    # When that process started, by its host's clock: a pid reused later is not it.
    process_started = models.FloatField(_("process started"), null=True, blank=True)
    queues = models.JSONField(_("queues"), default=list)
    concurrency = models.PositiveIntegerField(_("concurrency"), default=0)
    tasks_in_hand = models.PositiveIntegerField(_("tasks in hand"), default=0)
    cpu_percent = models.FloatField(_("CPU %"), null=True, blank=True)
    memory_bytes = models.BigIntegerField(_("memory (bytes)"), null=True, blank=True)
    state = models.CharField(
        _("state"), max_length=16, choices=WorkerState.choices, default=WorkerState.ONLINE
    )
    started_at = models.DateTimeField(_("started"))
    last_seen_at = models.DateTimeField(_("last seen"))

    class Meta:
        verbose_name = _("batch worker")
        verbose_name_plural = _("batch workers")
        ordering = ["name", "-started_at"]
        indexes = [models.Index(fields=["name"], name="batchworker_name_idx")]

    def __str__(self) -> str:
        return self.name
