"""Schedules: tasks submitted at the ticks of a cron expression or a fixed interval, and
the ticks claimed (one row per schedule and tick: the unique key that makes a tick run
once however many workers try)."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from ..core.exceptions import InvalidTaskOption
from ..core.schedules import Timing, check_timing
from .definitions import PRIORITY_VALIDATORS
from .tasks import BatchTask


class CatchUp(models.TextChoices):
    """What a schedule runs of the ticks an outage missed."""

    ALL = "all", _("all missed ticks (up to the limit)")
    LATEST = "latest", _("the latest missed tick")
    NONE = "none", _("none")


class ScheduleSource(models.TextChoices):
    """Where a schedule is declared: the settings' rows follow them at each sync."""

    SETTINGS = "settings", _("settings")
    CODE = "code", _("code (@batchtask)")
    ADMIN = "admin", _("admin")
    CELERY_BEAT = "celery-beat", _("celery beat")


class TickOutcome(models.TextChoices):
    SUBMITTED = "submitted", _("submitted")
    SKIPPED_OVERLAP = "skipped: overlap", _("skipped: the previous task is unfinished")
    FAILED = "failed", _("failed to submit")


class BatchTaskSchedule(models.Model):
    """A task type submitted at each tick of ``cron`` (in ``timezone``) or every
    ``every`` seconds; ``next_run_at`` is the next tick, by the database's clock."""

    name = models.CharField(_("name"), max_length=255, unique=True)
    type_name = models.CharField(_("task type"), max_length=200)
    cron = models.CharField(
        _("cron"),
        max_length=200,
        blank=True,
        help_text=_("minute hour day-of-month month day-of-week, e.g. '30 2 * * *'; or empty."),
    )
    every = models.PositiveIntegerField(
        _("every (s)"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text=_("Seconds between ticks, instead of cron."),
    )
    timezone = models.CharField(_("time zone"), max_length=64, default="UTC")
    enabled = models.BooleanField(_("enabled"), default=True)
    params = models.JSONField(_("parameters"), default=dict, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        # The users may live in another database than the tasks
        # (docs/how-to/task-database.md): no constraint, and a deleted user's rows are unowned by
        # ``owners.forget_owner`` on the task database, not by Django's collector.
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="batch_task_schedules",
        verbose_name=_("owner"),
    )
    priority = models.SmallIntegerField(
        _("priority"),
        null=True,
        blank=True,
        validators=PRIORITY_VALIDATORS,
        help_text=_("Empty = the type's default."),
    )
    description = models.CharField(_("description"), max_length=500, blank=True)
    catch_up = models.CharField(
        _("catch up"), max_length=8, choices=CatchUp.choices, default=CatchUp.LATEST
    )
    catch_up_limit = models.PositiveIntegerField(
        _("catch-up limit"),
        default=100,
        validators=[MinValueValidator(1)],
        help_text=_("Most missed ticks run after an outage with catch up 'all'."),
    )
    overlap = models.BooleanField(
        _("overlap"),
        default=False,
        help_text=_("Run a tick even while the previous task is unfinished."),
    )
    source = models.CharField(
        _("declared in"),
        max_length=16,
        choices=ScheduleSource.choices,
        default=ScheduleSource.ADMIN,
        editable=False,
    )
    #: ``enabled`` as the settings said at their last sync (None: not declared there).
    declared_enabled = models.BooleanField(null=True, editable=False)
    next_run_at = models.DateTimeField(_("next run"), null=True, blank=True, editable=False)
    last_run_at = models.DateTimeField(_("last run"), null=True, blank=True, editable=False)
    last_task = models.ForeignKey(
        BatchTask,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="+",
        verbose_name=_("last task"),
        db_constraint=False,
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("batch task schedule")
        verbose_name_plural = _("batch task schedules")
        ordering = ["name"]
        indexes = [
            models.Index(
                fields=["next_run_at"],
                name="batchtasks_schedule_due",
                condition=models.Q(enabled=True),
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def timing(self) -> Timing:
        """When it ticks; ``InvalidTaskOption`` if its fields do not say."""
        return check_timing(self.name, self.cron, self.every, self.timezone)

    def clean(self) -> None:
        super().clean()
        try:
            self.timing  # noqa: B018  (checks the fields)
        except InvalidTaskOption as exc:
            raise ValidationError(str(exc)) from None

    def timing_text(self) -> str:
        if self.every is not None:
            return f"every {self.every} s"
        return f"{self.cron} ({self.timezone})"


class BatchTaskScheduleTick(models.Model):
    """A tick of a schedule claimed by the process that inserted this row (and only it:
    the unique constraint), with the task it submitted or why it submitted none."""

    schedule = models.ForeignKey(
        BatchTaskSchedule,
        on_delete=models.CASCADE,
        related_name="ticks",
        verbose_name=_("schedule"),
    )
    tick = models.DateTimeField(_("tick"))
    task = models.ForeignKey(
        BatchTask,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("task"),
        db_constraint=False,
    )
    outcome = models.CharField(_("outcome"), max_length=32, choices=TickOutcome.choices)
    message = models.TextField(_("message"), blank=True)
    claimed_at = models.DateTimeField(_("claimed"))

    class Meta:
        verbose_name = _("schedule tick")
        verbose_name_plural = _("schedule ticks")
        ordering = ["-tick"]
        constraints = [
            models.UniqueConstraint(fields=["schedule", "tick"], name="batchtasks_one_task_a_tick")
        ]

    def __str__(self) -> str:
        return f"{self.schedule_id} @ {self.tick.isoformat()}"
