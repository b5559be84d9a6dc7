"""What belongs to one task: its encoded parameters, the record of each attempt, and
the earlier outcomes whose finalizers a retry left to run."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from ..core.states import AttemptOutcome, FinalizeState, TaskState
from .tasks import BatchTask, finalize_fields


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


class BatchTaskOutcome(models.Model):
    """A final outcome of a task that a retry replaced before its finalizers were
    recorded: they run for it from this row, with its own state, result and error."""

    # Written by the retry's transaction (which holds the task's row) and deleted with
    # the task, as its attempts are: no database constraint to check.
    task = models.ForeignKey(
        BatchTask,
        on_delete=models.CASCADE,
        related_name="earlier_outcomes",
        db_index=False,
        db_constraint=False,
    )
    attempt = models.PositiveIntegerField(_("attempt"))
    state = models.CharField(_("state"), max_length=16, choices=TaskState.choices)
    result = models.JSONField(_("result"), null=True, blank=True)
    error_type = models.CharField(_("error type"), max_length=200, blank=True)
    error_message = models.TextField(_("error message"), blank=True)
    error_traceback = models.TextField(_("traceback"), blank=True)
    worker = models.CharField(_("worker"), max_length=200, blank=True)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    finalize_state, finalize_attempts, finalize_after, finalize_error = finalize_fields()

    #: The task's fields this row keeps as they were at its outcome.
    OUTCOME_FIELDS = (
        "attempt", "state", "result", "error_type", "error_message", "error_traceback",
        "worker", "started_at", "finished_at", "finalize_state", "finalize_attempts",
        "finalize_after", "finalize_error",
    )  # fmt: skip

    class Meta:
        verbose_name = _("earlier outcome")
        verbose_name_plural = _("earlier outcomes")
        ordering = ["task", "attempt"]
        constraints = [
            models.UniqueConstraint(fields=["task", "attempt"], name="batchtask_outcome_once"),
        ]
        indexes = [
            # Finalizers due (the sweeper's pick, beside the tasks' own).
            models.Index(
                fields=["finalize_after"],
                name="batchtask_outcome_due_idx",
                condition=Q(finalize_state=FinalizeState.PENDING),
            ),
        ]

    def __str__(self) -> str:
        return f"task #{self.task_id} attempt {self.attempt}: {self.state}"

    def as_task(self, task: BatchTask) -> BatchTask:
        """``task`` (its row as it is now) as it was at this outcome: what its finalizers
        are given."""
        for name in self.OUTCOME_FIELDS:
            setattr(task, name, getattr(self, name))
        return task
