"""Queues and task type definitions: the live configuration the dispatcher reads."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from ..core.exceptions import InvalidTaskOption
from ..core.limits import parse_rate
from ..core.names import validate_queue_name
from ..core.states import PRIORITY_MAX, PRIORITY_MIN, Isolation, Priority

PRIORITY_VALIDATORS = [MinValueValidator(PRIORITY_MIN), MaxValueValidator(PRIORITY_MAX)]


def validate_rate_limit(value: str) -> None:
    """A form's check of a ``rate_limit`` text."""
    try:
        parse_rate(value)
    except InvalidTaskOption as exc:
        raise ValidationError(str(exc)) from None


class BatchQueue(models.Model):
    """A Celery routing queue; its limit caps the tasks in flight of all its types together."""

    # Queue names reach compose files and worker command lines: the rule of code's names.
    name = models.CharField(
        _("name"), max_length=200, unique=True, validators=[validate_queue_name]
    )
    max_concurrency = models.PositiveIntegerField(
        _("max concurrency"),
        null=True,
        blank=True,
        help_text=_("Most tasks queued or running at once in this queue; empty = no limit."),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("batch queue")
        verbose_name_plural = _("batch queues")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class BatchTaskDefinition(models.Model):
    """The live settings of one task type (created from the code's registry on first use)."""

    name = models.CharField(_("name"), max_length=200, unique=True)
    description = models.TextField(_("description"), blank=True)
    queue = models.CharField(_("queue"), max_length=200, validators=[validate_queue_name])
    max_concurrency = models.PositiveIntegerField(
        _("max concurrency"),
        null=True,
        blank=True,
        help_text=_("Most tasks of this type queued or running at once; empty = no limit."),
    )
    max_concurrency_per_key = models.PositiveIntegerField(
        _("max concurrency per key"),
        null=True,
        blank=True,
        help_text=_(
            "Most tasks with the same concurrency key queued or running at once, cluster-wide; "
            "empty = no limit per key."
        ),
    )
    rate_limit = models.CharField(
        _("rate limit"),
        max_length=16,
        blank=True,
        default="",
        validators=[validate_rate_limit],
        help_text=_(
            "Most starts per second, minute or hour: 'N/s', 'N/m' or 'N/h' (for example "
            "'20/s'), for the type as a whole and for each rate key on its own; empty = none."
        ),
    )
    priority = models.SmallIntegerField(
        _("default priority"), default=Priority.NORMAL, validators=PRIORITY_VALIDATORS
    )
    timeout = models.PositiveIntegerField(
        _("timeout (s)"), null=True, blank=True, help_text=_("Hard time limit in seconds.")
    )
    soft_timeout = models.PositiveIntegerField(
        _("soft timeout (s)"),
        null=True,
        blank=True,
        help_text=_("Seconds after which the plugin gets an exception it may catch."),
    )
    max_attempts = models.PositiveSmallIntegerField(
        _("max attempts"), default=1, validators=[MinValueValidator(1)]
    )
    max_lost_runs = models.PositiveSmallIntegerField(
        _("max lost runs"),
        default=3,
        help_text=_(
            "Runs lost with their worker (killed, out of memory, host gone) that run again "
            "without counting as attempts; one more fails the task."
        ),
    )
    retry_backoff = models.PositiveIntegerField(
        _("retry backoff (s)"),
        default=2,
        help_text=_("Delay before the second attempt; it doubles for each attempt after."),
    )
    retry_backoff_max = models.PositiveIntegerField(_("longest retry backoff (s)"), default=600)
    retention = models.PositiveIntegerField(
        _("retention (s)"),
        null=True,
        blank=True,
        help_text=_("Seconds a finished task is kept; 0 = delete on completion; empty = forever."),
    )
    isolation = models.CharField(
        _("isolation"), max_length=16, choices=Isolation.choices, default=Isolation.INLINE
    )
    memory_limit = models.PositiveBigIntegerField(
        _("memory limit (bytes)"),
        null=True,
        blank=True,
        help_text=_("Most memory a process-isolated run may use; empty = no limit."),
    )
    inactivity_timeout = models.PositiveIntegerField(
        _("inactivity timeout (s)"),
        null=True,
        blank=True,
        help_text=_(
            "A run that reports no progress (an executor: prints nothing) for this long is "
            "stopped and fails; empty = never."
        ),
    )
    tasks_per_message = models.PositiveSmallIntegerField(
        _("tasks per message"),
        null=True,
        blank=True,
        help_text=_(
            "Most tasks of a backlog sent to a worker in one message, run one after another; "
            "empty = as many as fit in MESSAGE_BATCH_SECONDS of measured run time, for types "
            "that run inline; 1 = one task per message."
        ),
    )
    run_seconds = models.FloatField(
        _("measured run time (s)"),
        null=True,
        blank=True,
        editable=False,
        help_text=_("Moving average of the run time of this type's successful runs."),
    )
    function_module = models.CharField(
        _("function module"),
        max_length=200,
        blank=True,
        default="",
        editable=False,
        help_text=_(
            "The module of the django.tasks function this type runs, as its backend recorded "
            "it; a worker that does not know the type imports it. Empty for plugin classes."
        ),
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("batch task definition")
        verbose_name_plural = _("batch task definitions")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class BatchTaskRateLimit(models.Model):
    """The rate budget of one key of a rate-limited type: when its next start is due at
    the steady rate (``core.limits``), moved on by the transaction that admits its tasks."""

    definition = models.ForeignKey(
        BatchTaskDefinition, on_delete=models.CASCADE, related_name="rate_limits"
    )
    #: The tasks' ``rate_key``; "" for the tasks without one (the type as a whole).
    key = models.CharField(_("rate key"), max_length=200, blank=True)
    tat = models.DateTimeField(_("next start on time"))

    class Meta:
        verbose_name = _("batch task rate limit")
        verbose_name_plural = _("batch task rate limits")
        constraints = [
            models.UniqueConstraint(fields=["definition", "key"], name="batchtask_rate_key")
        ]

    def __str__(self) -> str:
        return f"{self.definition_id}:{self.key}"
