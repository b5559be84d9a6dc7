"""The canonical tables: queues, task definitions, tasks, their parameters and attempts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, router
from django.db.models import Q
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.translation import gettext_lazy as _

from .states import (
    FINAL_STATES,
    PRIORITY_MAX,
    PRIORITY_MIN,
    STATE_CODES,
    UNFINISHED_STATES,
    Isolation,
    Priority,
    TaskState,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

PRIORITY_VALIDATORS = [MinValueValidator(PRIORITY_MIN), MaxValueValidator(PRIORITY_MAX)]


class BatchQueue(models.Model):
    """A Celery routing queue; its limit caps the tasks in flight of all its types together."""

    name = models.CharField(_("name"), max_length=200, unique=True)
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
    queue = models.CharField(_("queue"), max_length=200)
    max_concurrency = models.PositiveIntegerField(
        _("max concurrency"),
        null=True,
        blank=True,
        help_text=_("Most tasks of this type queued or running at once; empty = no limit."),
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
    enabled = models.BooleanField(_("enabled"), default=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("batch task definition")
        verbose_name_plural = _("batch task definitions")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class TaskError:
    """What went wrong in a failed task."""

    type: str
    message: str
    traceback: str


class BatchTask(models.Model):
    """One piece of background work and everything known about it; the row is the truth."""

    # Every index costs a write on each state change; the ones in Meta serve every
    # query that matters, so the foreign keys go without their default indexes.
    definition = models.ForeignKey(
        BatchTaskDefinition,
        on_delete=models.PROTECT,
        related_name="tasks",
        verbose_name=_("type"),
        db_index=False,
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="batch_tasks",
        verbose_name=_("owner"),
        db_index=False,
    )
    state = models.CharField(
        _("state"), max_length=16, choices=TaskState.choices, default=TaskState.NEW
    )
    priority = models.SmallIntegerField(
        _("priority"), default=Priority.NORMAL, validators=PRIORITY_VALIDATORS
    )
    description = models.CharField(_("description"), max_length=500, blank=True)
    fairness_key = models.CharField(_("fairness key"), max_length=200, blank=True)
    # Start-time fair queueing: a task's turn among the waiting tasks of its type.
    fair_round = models.BigIntegerField(_("fair round"), default=0, editable=False)
    # NULL, not "": any number of tasks without a key may be unfinished at once.
    unique_key = models.CharField(  # noqa: DJ001
        _("unique key"), max_length=200, null=True, blank=True
    )
    queue = models.CharField(_("queue"), max_length=200, blank=True, editable=False)
    run_after = models.DateTimeField(_("run after"), null=True, blank=True)
    attempt = models.PositiveIntegerField(_("attempt"), default=1)
    progress_percent = models.PositiveSmallIntegerField(_("progress %"), default=0)
    progress_message = models.CharField(_("progress"), max_length=500, blank=True)
    result = models.JSONField(_("result"), null=True, blank=True)
    error_type = models.CharField(_("error type"), max_length=200, blank=True)
    error_message = models.TextField(_("error message"), blank=True)
    error_traceback = models.TextField(_("traceback"), blank=True)
    worker = models.CharField(_("worker"), max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(_("lease expires"), null=True, blank=True)
    cancel_requested = models.BooleanField(_("cancel requested"), default=False)
    created_at = models.DateTimeField(_("created"), default=timezone.now, editable=False)
    queued_at = models.DateTimeField(_("queued"), null=True, blank=True)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)

    class Meta:
        verbose_name = _("batch task")
        verbose_name_plural = _("batch tasks")
        ordering = ["-id"]
        permissions = [
            ("cancel_batchtask", _("Can cancel batch tasks")),
            ("retry_batchtask", _("Can retry batch tasks")),
        ]
        indexes = [
            # The dispatcher's pick: due waiting tasks of a type by priority, turn, age.
            models.Index(
                "definition",
                models.F("priority").desc(),
                "fair_round",
                "id",
                name="batchtask_dispatch_idx",
                condition=Q(state=TaskState.NEW),
            ),
            # The fair turn of a new task: the newest waiting turn of its key.
            models.Index(
                fields=["definition", "fairness_key", "fair_round"],
                name="batchtask_fair_key_idx",
                condition=Q(state=TaskState.NEW),
            ),
            models.Index(
                fields=["definition", "fair_round"],
                name="batchtask_fair_head_idx",
                condition=Q(state=TaskState.NEW),
            ),
            # When the next delayed task falls due.
            models.Index(
                fields=["run_after"],
                name="batchtask_delayed_idx",
                condition=Q(state=TaskState.NEW, run_after__isnull=False),
            ),
            # Leases to check for expiry.
            models.Index(
                fields=["lease_expires_at"],
                name="batchtask_lease_idx",
                condition=Q(state=TaskState.RUNNING),
            ),
            # Slots in use, counted under the dispatcher's lock.
            models.Index(
                fields=["queue", "definition"],
                name="batchtask_inflight_idx",
                condition=Q(state__in=[TaskState.QUEUED, TaskState.RUNNING]),
            ),
            # "My tasks", newest first.
            models.Index(fields=["owner", "-created_at"], name="batchtask_owner_idx"),
            # Retention purges and recent failures.
            models.Index(
                fields=["finished_at"],
                name="batchtask_finished_idx",
                condition=Q(state__in=list(FINAL_STATES)),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["definition", "unique_key"],
                name="batchtask_unique_unfinished",
                condition=Q(state__in=list(UNFINISHED_STATES), unique_key__isnull=False),
            ),
            models.CheckConstraint(
                condition=Q(priority__gte=PRIORITY_MIN, priority__lte=PRIORITY_MAX),
                name="batchtask_priority_range",
            ),
            models.CheckConstraint(
                condition=Q(progress_percent__lte=100), name="batchtask_progress_range"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.definition.name} #{self.pk} ({self.state})"

    # --- reading ------------------------------------------------------------------
    @property
    def state_code(self) -> int:
        """SuperOffice's numeric state (4 succeeded, 5 failed/cancelled/skipped)."""
        return STATE_CODES[self.state]

    @property
    def type_name(self) -> str:
        """The task type's registered name."""
        return self.definition.name

    @property
    def error(self) -> TaskError | None:
        """The error of a failed attempt, or ``None``."""
        if not self.error_type:
            return None
        return TaskError(self.error_type, self.error_message, self.error_traceback)

    @property
    def duration(self) -> timedelta | None:
        """Time from start to finish (or to now while running)."""
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    @cached_property
    def params(self) -> Any:
        """The decoded parameters the task was submitted with."""
        from .codecs import decode

        try:
            stored = self.parameters
        except BatchTaskParameters.DoesNotExist:
            return None
        return decode(bytes(stored.data), stored.codec)

    # --- the public API ----------------------------------------------------------
    @classmethod
    def submit(
        cls,
        type_name: str,
        params: Any = None,
        *,
        owner: Any = None,
        priority: int | None = None,
        description: str = "",
        run_after: datetime | timedelta | None = None,
        unique_key: str | None = None,
        on_conflict: str = "return",
        fairness_key: str | None = None,
        using: str | None = None,
    ) -> BatchTask:
        """Save a new task in the caller's transaction; it is dispatched after commit."""
        from .submit import submit

        return submit(
            type_name,
            params,
            owner=owner,
            priority=priority,
            description=description,
            run_after=run_after,
            unique_key=unique_key,
            on_conflict=on_conflict,
            fairness_key=fairness_key,
            using=using,
        )

    @classmethod
    def submit_many(
        cls,
        type_name: str,
        params_list: Iterable[Any],
        *,
        owner: Any = None,
        priority: int | None = None,
        description: str = "",
        run_after: datetime | timedelta | None = None,
        fairness_key: str | None = None,
        using: str | None = None,
    ) -> list[BatchTask]:
        """Save one task per parameter set in one transaction; dispatched after commit."""
        from .submit import submit_many

        return submit_many(
            type_name,
            params_list,
            owner=owner,
            priority=priority,
            description=description,
            run_after=run_after,
            fairness_key=fairness_key,
            using=using,
        )

    def _db_for_write(self) -> str:
        return self._state.db or router.db_for_write(BatchTask, instance=self)

    def cancel(self) -> bool:
        """Cancel a waiting task at once, or ask a running one to stop; True if it applied."""
        from . import transitions

        applied = transitions.cancel(self.pk, using=self._db_for_write())
        self.refresh_from_db(fields=["state", "cancel_requested", "finished_at"])
        return applied

    def retry(self) -> bool:
        """Run a failed or cancelled task again, as its next attempt; True if it applied."""
        from . import transitions
        from .dispatch import dispatch_on_commit

        db = self._db_for_write()
        applied = transitions.retry(self.pk, using=db)
        if applied:
            dispatch_on_commit(self.definition.queue, using=db)
        self.refresh_from_db()
        return applied

    def set_priority(self, priority: int) -> bool:
        """Move a task in line; True if it was still waiting for dispatch (state new)."""
        from . import transitions
        from .submit import check_priority

        value = check_priority(priority)
        applied = transitions.set_priority(self.pk, value, using=self._db_for_write())
        if applied:
            self.priority = value
        return applied


class WorkerState(models.TextChoices):
    """Whether a worker is heard from."""

    ONLINE = "online", _("Online")
    STOPPED = "stopped", _("Stopped")
    OFFLINE = "offline", _("Offline (heartbeat lost)")


class BatchWorker(models.Model):
    """A Celery worker serving batch queues, as its last heartbeat described it."""

    name = models.CharField(_("name"), max_length=200, unique=True)
    host = models.CharField(_("host"), max_length=200)
    pid = models.PositiveIntegerField(_("pid"))
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
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class BatchTaskParameters(models.Model):
    """The encoded parameters of one task (SuperOffice's binaryobject)."""

    task = models.OneToOneField(
        BatchTask, on_delete=models.CASCADE, primary_key=True, related_name="parameters"
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

    task = models.ForeignKey(
        BatchTask, on_delete=models.CASCADE, related_name="attempts", db_index=False
    )  # the unique (task, number) index serves lookups by task
    number = models.PositiveIntegerField(_("attempt"))
    worker = models.CharField(_("worker"), max_length=200, blank=True)
    started_at = models.DateTimeField(_("started"), null=True)
    finished_at = models.DateTimeField(_("finished"))
    outcome = models.CharField(_("outcome"), max_length=16, choices=TaskState.choices)
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
