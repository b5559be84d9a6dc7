"""What belongs to one task: its encoded parameters and the record of each attempt."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from ..core.states import AttemptOutcome
from .tasks import BatchTask


class BatchTaskParameters(models.Model):
    """The encoded parameters of one task (SuperOffice's binaryobject)."""

    # Inserted with its task in one statement or COPY, and deleted with it (Django's
    # cascade, ``transitions.delete_tasks``): no database constraint to check per row.
    task = models.OneToOneField(
        BatchTask,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="parameters",
        db_constraint=False,
    )
    data = models.BinaryField(_("data"))
    codec = models.CharField(_("codec"), max_length=16, default="json")
    size = models.PositiveIntegerField(_("size (bytes)"))

    class Meta:
        verbose_name = _("batch task parameters")
        verbose_name_plural = _("batch task parameters")

    def __str__(self) -> str:
        return f"parameters of task #{self.task_id} ({self.codec}, {self.size} bytes)"


class BatchTaskAttempt(models.Model):
    """One run of a task, written when the attempt ends."""

    # The unique (task, number) index serves lookups by task. No database constraint:
    # an attempt row is only ever written by the statement that ends the attempt on its
    # task's row (which it holds locked), and tasks are deleted with their attempts
    # (Django's cascade, ``transitions``); the check per row was a third of a purge.
    task = models.ForeignKey(
        BatchTask,
        on_delete=models.CASCADE,
        related_name="attempts",
        db_index=False,
        db_constraint=False,
    )
    number = models.PositiveIntegerField(_("attempt"))
    worker = models.CharField(_("worker"), max_length=200, blank=True)
    started_at = models.DateTimeField(_("started"), null=True)
    finished_at = models.DateTimeField(_("finished"))
    outcome = models.CharField(_("outcome"), max_length=16, choices=AttemptOutcome.choices)
    error_type = models.CharField(_("error type"), max_length=200, blank=True)
    error_message = models.TextField(_("error message"), blank=True)

    class Meta:
        verbose_name = _("batch task attempt")
        verbose_name_plural = _("batch task attempts")
        ordering = ["task", "number"]
        constraints = [
            models.UniqueConstraint(fields=["task", "number"], name="batchtask_attempt_once"),
        ]

    def __str__(self) -> str:
        return f"task #{self.task_id} attempt {self.number}: {self.outcome}"
