"""Batch tasks, and the seam through which their API methods reach the services."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db import models, router
from django.db.models import Q
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.translation import gettext_lazy as _

from ..core.codecs import decode
from ..core.states import (
    FINAL_STATES,
    PRIORITY_MAX,
    PRIORITY_MIN,
    STATE_CODES,
    UNFINISHED_STATES,
    FinalizeState,
    Priority,
    TaskState,
)
from .definitions import PRIORITY_VALIDATORS, BatchTaskDefinition
from .groups import TaskGroup
from .queries import BatchTaskQuerySet
from .waiting import await_until, refuse_in_transaction, wait_until

#: What a child does when a parent ends failed, cancelled or skipped.
ON_PARENT_FAILURE = [("skip", _("Skip it")), ("run", _("Run it all the same"))]


@dataclass(frozen=True)
class TaskError:
    """What went wrong in a failed task."""

    type: str
    message: str
    traceback: str


def finalize_fields() -> tuple[models.Field[Any, Any], ...]:
    """Where a final outcome's finalizers are: state, runs, when due, last error (a task's
    own outcome, and one a retry kept, ``BatchTaskOutcome``)."""
    return (
        models.CharField(
            _("finalizers"), max_length=16, blank=True, default="", choices=FinalizeState.choices
        ),
        models.PositiveSmallIntegerField(_("finalizer attempts"), default=0),
        models.DateTimeField(_("finalizers due"), null=True, blank=True),
        models.TextField(_("finalizer error"), blank=True),
    )


class BatchTask(models.Model):
    """One piece of background work and everything known about it; the row is the truth."""

    # Every index costs a write on each state change; the ones in Meta serve every
    # query that matters, so the foreign keys go without their default indexes.
    # No database constraint either (Django still protects a definition with tasks): its
    # check ran once per inserted row at commit, a quarter of a submit_many's time, and
    # share-locked the one definition row that every submit of the type shares.
    definition = models.ForeignKey(
        BatchTaskDefinition,
        on_delete=models.PROTECT,
        related_name="tasks",
        verbose_name=_("type"),
        db_index=False,
        db_constraint=False,
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        # The users may live in another database than the tasks
        # (docs/how-to/task-database.md): no constraint, and a deleted user's rows are unowned by
        # ``owners.forget_owner`` on the task database, not by Django's collector.
        on_delete=models.DO_NOTHING,
        db_constraint=False,
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
    # The priority it was given (at submit, or by set_priority), kept when the sweeper's
    # priority aging (BATCHTASKS["PRIORITY_AGING"]) raised ``priority``; NULL if never raised.
    base_priority = models.SmallIntegerField(
        _("priority before aging"), null=True, blank=True, editable=False
    )
    description = models.CharField(_("description"), max_length=500, blank=True)
    fairness_key = models.CharField(_("fairness key"), max_length=200, blank=True)
    # Per-key limits of its type (max_concurrency_per_key, rate_limit); "" is a key too.
    concurrency_key = models.CharField(_("concurrency key"), max_length=200, blank=True)
    rate_key = models.CharField(_("rate key"), max_length=200, blank=True)
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
    # Which boot of the worker holds the running attempt, and in which process: every
    # write a worker makes is fenced by (id, attempt, worker_instance).
    worker_instance = models.CharField(_("worker instance"), max_length=32, blank=True)
    worker_pid = models.PositiveIntegerField(_("worker pid"), null=True, blank=True)
    lease_expires_at = models.DateTimeField(_("lease expires"), null=True, blank=True)
    cancel_requested = models.BooleanField(_("cancel requested"), default=False)
    lost_runs = models.PositiveSmallIntegerField(_("lost runs"), default=0)
    # The last time the sweeper published its message again, and how often it has.
    republished_at = models.DateTimeField(_("republished"), null=True, blank=True)
    republish_count = models.PositiveSmallIntegerField(_("republished"), default=0)
    created_at = models.DateTimeField(_("created"), default=timezone.now, editable=False)
    queued_at = models.DateTimeField(_("queued"), null=True, blank=True)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    # The finalizers of its type, run once it is final (see core.states.FinalizeState).
    finalize_state, finalize_attempts, finalize_after, finalize_error = finalize_fields()
    # The last change a user could see (state, progress, priority, a cancel request);
    # lease renewals and re-publishing leave it alone. The API's ``since`` filter.
    updated_at = models.DateTimeField(_("updated"), default=timezone.now, editable=False)
    # The tasks of one submit_many share it (TaskGroup); NULL for tasks submitted alone.
    group_id = models.UUIDField(_("group"), null=True, blank=True, editable=False)
    # Dependencies (``depends_on``, ``BatchTaskDependency``): how many parents a blocked
    # task still waits for, what a parent that did not succeed does to it, and how many
    # children wait or waited for this one (0: its final write has nobody to tell).
    pending_parents = models.PositiveIntegerField(_("parents unfinished"), default=0)
    on_parent_failure = models.CharField(
        _("on parent failure"), max_length=8, choices=ON_PARENT_FAILURE, default="skip"
    )
    child_count = models.PositiveIntegerField(_("children"), default=0, editable=False)

    objects = BatchTaskQuerySet.as_manager()

    class Meta:
        verbose_name = _("batch task")
        verbose_name_plural = _("batch tasks")
        ordering = ["-id"]
        permissions = [
            ("cancel_batchtask", _("Can cancel batch tasks")),
            ("retry_batchtask", _("Can retry batch tasks")),
            ("view_all_batchtasks", _("Can see every user's batch tasks in the API")),
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
            # Tasks waiting for their parents, per type (the monitor's count).
            models.Index(
                fields=["definition"],
                name="batchtask_blocked_idx",
                condition=Q(state=TaskState.BLOCKED),
            ),
            # Leases to check for expiry.
            models.Index(
                fields=["lease_expires_at"],
                name="batchtask_lease_idx",
                condition=Q(state=TaskState.RUNNING),
            ),
            # Slots in use, counted under the dispatcher's lock (per concurrency key too:
            # those of a type are few, read from here; an index of their own would cost
            # every task of every type a write).
            models.Index(
                fields=["queue", "definition"],
                name="batchtask_inflight_idx",
                condition=Q(state__in=[TaskState.QUEUED, TaskState.RUNNING]),
            ),
            # "My tasks", newest first.
            models.Index(fields=["owner", "-created_at"], name="batchtask_owner_idx"),
            # The running-tasks indicator's poll: an owner's unfinished tasks (finished_at
            # is NULL exactly while a task is unfinished) and those finished lately.
            models.Index(fields=["owner", "finished_at"], name="batchtask_owner_active_idx"),
            # Retention purges, recent failures, and the monitor's finishes per type and
            # minute (answered from the index alone: hence the two trailing columns).
            models.Index(
                fields=["finished_at", "definition", "state"],
                name="batchtask_finished_idx",
                condition=Q(state__in=list(FINAL_STATES)),
            ),
            # The tasks of a group (TaskGroup).
            models.Index(
                fields=["group_id"],
                name="batchtask_group_idx",
                condition=Q(group_id__isnull=False),
            ),
            # Finalizers due (the sweeper's pick).
            models.Index(
                fields=["finalize_after"],
                name="batchtask_finalize_idx",
                condition=Q(finalize_state=FinalizeState.PENDING),
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
        try:
            stored = self.parameters
        except ObjectDoesNotExist:
            return None
        return decode(bytes(stored.data), stored.codec)

    def parents(self) -> Any:
        """The tasks this one depends on (``depends_on``), in that order."""
        return (
            BatchTask.objects.using(self._db_for_wait())
            .filter(child_links__child=self)
            .order_by("child_links__position")
        )

    def children(self) -> Any:
        """The tasks that depend on this one, oldest first."""
        return (
            BatchTask.objects.using(self._db_for_wait())
            .filter(parent_links__parent=self)
            .order_by("pk")
        )

    def parent_results(self) -> dict[int, Any]:
        """``{parent id: result}`` in ``depends_on`` order; ``None`` for a parent that did
        not succeed (a parent purged by retention is left out)."""
        links = (
            self.parent_links.using(self._db_for_wait())
            .order_by("position")
            .values_list("parent_id", "parent__state", "parent__result")
        )
        return {pk: result if state == TaskState.SUCCEEDED else None for pk, state, result in links}

    # --- the public API: delegated to the services through the seam below ---------
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
        concurrency_key: str | None = None,
        rate_key: str | None = None,
        depends_on: Iterable[Any] | None = None,
        on_parent_failure: str = "skip",
        using: str | None = None,
    ) -> BatchTask:
        """Save a new task in the caller's transaction; it is dispatched after commit.

        With ``depends_on`` (tasks or ids) it waits, ``blocked``, until every parent is
        final; a parent that did not succeed skips it unless ``on_parent_failure="run"``.
        """
        return operations().submit(
            type_name,
            params,
            owner=owner,
            priority=priority,
            description=description,
            run_after=run_after,
            unique_key=unique_key,
            on_conflict=on_conflict,
            fairness_key=fairness_key,
            concurrency_key=concurrency_key,
            rate_key=rate_key,
            depends_on=depends_on,
            on_parent_failure=on_parent_failure,
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
        concurrency_key: str | None = None,
        rate_key: str | None = None,
        depends_on: Iterable[Any] | None = None,
        on_parent_failure: str = "skip",
        using: str | None = None,
    ) -> TaskGroup:
        """Save one task per parameter set in one transaction; dispatched after commit.

        Returns them as a ``TaskGroup`` (a list with a group id, aggregate progress and
        state counts, and ``wait()``).
        """
        return operations().submit_many(
            type_name,
            params_list,
            owner=owner,
            priority=priority,
            description=description,
            run_after=run_after,
            fairness_key=fairness_key,
            concurrency_key=concurrency_key,
            rate_key=rate_key,
            depends_on=depends_on,
            on_parent_failure=on_parent_failure,
            using=using,
        )

    def wait(self, timeout: float | None = None) -> BatchTask:
        """Block until the task is final and return it, reloaded; ``TimeoutError`` after
        ``timeout`` seconds. Not inside the transaction that submitted it."""
        if not self._reload_final():
            refuse_in_transaction(self._db_for_wait(), f"Task {self.pk}")
            wait_until(self._reload_final, timeout, f"Task {self.pk}")
        return self

    async def wait_async(self, timeout: float | None = None) -> BatchTask:
        """``wait`` for async code: the event loop is not blocked while it waits."""
        reload_final = sync_to_async(self._reload_final)
        if not await reload_final():
            await sync_to_async(refuse_in_transaction)(self._db_for_wait(), f"Task {self.pk}")
            await await_until(reload_final, timeout, f"Task {self.pk}")
        return self

    def _db_for_wait(self) -> str:
        return self._state.db or router.db_for_write(BatchTask, instance=self)

    def _reload_final(self) -> bool:
        self.refresh_from_db(using=self._db_for_wait())
        return self.state in FINAL_STATES

    def cancel(self, *, cascade: bool = False) -> bool:
        """Cancel a waiting task at once, or ask a running one to stop; True if it applied.

        With ``cascade`` its blocked descendants are cancelled too, whatever their
        ``on_parent_failure``.
        """
        return operations().cancel(self, cascade=cascade)

    def retry(self) -> bool:
        """Run a failed or cancelled task again, as its next attempt; True if it applied.

        Raises ``UniqueKeyConflict`` if an unfinished task now holds its unique key.
        """
        return operations().retry(self)

    def set_priority(self, priority: int) -> bool:
        """Move a task in line; True if it was still waiting for dispatch (state new)."""
        return operations().set_priority(self, priority)


class TaskOperations(Protocol):
    """What the model's API methods delegate to: ``batchtasks.services.operations``."""

    def submit(self, type_name: str, params: Any = None, **options: Any) -> BatchTask: ...

    def submit_many(
        self, type_name: str, params_list: Iterable[Any], **options: Any
    ) -> TaskGroup: ...

    def cancel(self, task: BatchTask, *, cascade: bool = False) -> bool: ...

    def retry(self, task: BatchTask) -> bool: ...

    def set_priority(self, task: BatchTask, priority: int) -> bool: ...


# The one seam from the models up to the services. The models sit below the services
# (which import them), so the services hand their operations down when the app is ready
# (``BatchTasksConfig.ready``) instead of the models importing them.
_operations: TaskOperations | None = None


def install_operations(implementation: TaskOperations) -> None:
    """Set what ``BatchTask.submit`` and the other API methods call."""
    global _operations
    _operations = implementation


def operations() -> TaskOperations:
    """The installed operations; the app must be ready."""
    if _operations is None:
        raise RuntimeError(
            "batchtasks is not ready: add 'batchtasks' to INSTALLED_APPS and call "
            "django.setup() before submitting tasks."
        )
    return _operations
