"""Admin: tasks read-only with a cancel action; definitions and queues editable."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .core.exceptions import UniqueKeyConflict
from .core.registry import OPTIONS
from .core.states import Priority, TaskState
from .models import BatchQueue, BatchTask, BatchTaskAttempt, BatchTaskDefinition, BatchWorker
from .services.definitions import ensure_queue

STATE_COLOURS: dict[str, str] = {
    TaskState.NEW: "#6c757d",
    TaskState.QUEUED: "#0d6efd",
    TaskState.RUNNING: "#fd7e14",
    TaskState.SUCCEEDED: "#198754",
    TaskState.FAILED: "#dc3545",
    TaskState.CANCELLED: "#6f42c1",
    TaskState.SKIPPED: "#adb5bd",
}


class PriorityFilter(admin.SimpleListFilter):
    title = _("priority")
    parameter_name = "priority_band"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            ("immediate", _("Immediate (100)")),
            ("important", _("Important (50 to 99)")),
            ("raised", _("Raised (1 to 49)")),
            ("normal", _("Normal (0)")),
            ("lowered", _("Lowered (below 0)")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        bands = {
            "immediate": {"priority__gte": Priority.IMMEDIATE},
            "important": {"priority__gte": Priority.IMPORTANT, "priority__lt": Priority.IMMEDIATE},
            "raised": {"priority__gt": Priority.NORMAL, "priority__lt": Priority.IMPORTANT},
            "normal": {"priority": Priority.NORMAL},
            "lowered": {"priority__lt": Priority.NORMAL},
        }
        value = self.value()
        return queryset.filter(**bands[value]) if value in bands else queryset


class AttemptInline(admin.TabularInline):
    model = BatchTaskAttempt
    extra = 0
    can_delete = False
    fields = readonly_fields = (
        "number",
        "outcome",
        "worker",
        "started_at",
        "finished_at",
        "error_type",
        "error_message",
    )

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _pre(value: str) -> str:
    return format_html('<pre style="white-space: pre-wrap; margin: 0">{}</pre>', value)


@admin.register(BatchTask)
class BatchTaskAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "state_badge",
        "definition",
        "owner",
        "priority",
        "progress_bar",
        "created_at",
        "duration_display",
    )
    list_filter = (
        "state",
        "definition",
        PriorityFilter,
        ("owner", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = ("=id", "description", "definition__name", "owner__username", "unique_key")
    list_select_related = ("definition", "owner")
    show_full_result_count = False
    date_hierarchy = "created_at"
    actions = ("cancel_tasks", "retry_tasks")
    inlines = (AttemptInline,)
    fieldsets = (
        (None, {"fields": ("definition", "state", "owner", "description", "priority")}),
        (_("Progress"), {"fields": ("progress_bar", "progress_message", "worker", "attempt")}),
        (_("Data"), {"fields": ("parameters_display", "result_display", "error_display")}),
        (
            _("Timing"),
            {"fields": ("created_at", "run_after", "queued_at", "started_at", "finished_at")},
        ),
        (
            _("Scheduling"),
            {
                "classes": ("collapse",),
                "fields": (
                    "queue",
                    "fairness_key",
                    "unique_key",
                    "cancel_requested",
                    "lease_expires_at",
                ),
            },
        ),
    )
    readonly_fields = (
        "definition",
        "state",
        "owner",
        "description",
        "priority",
        "progress_bar",
        "progress_message",
        "worker",
        "attempt",
        "parameters_display",
        "result_display",
        "error_display",
        "created_at",
        "run_after",
        "queued_at",
        "started_at",
        "finished_at",
        "queue",
        "fairness_key",
        "unique_key",
        "cancel_requested",
        "lease_expires_at",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("batchtasks.cancel_batchtask"))

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("batchtasks.retry_batchtask"))

    @admin.display(description=_("state"), ordering="state")
    def state_badge(self, task: BatchTask) -> str:
        return format_html(
            '<span style="color: #fff; background: {}; padding: 1px 6px; border-radius: 3px">'
            "{}</span>",
            STATE_COLOURS.get(task.state, "#333"),
            task.get_state_display(),
        )

    @admin.display(description=_("progress"), ordering="progress_percent")
    def progress_bar(self, task: BatchTask) -> str:
        return format_html(
            '<progress value="{}" max="100" title="{}"></progress> {}%',
            task.progress_percent,
            task.progress_message,
            task.progress_percent,
        )

    @admin.display(description=_("duration"))
    def duration_display(self, task: BatchTask) -> str:
        duration = task.duration
        if duration is None:
            return "-"
        return f"{duration.total_seconds():.1f} s"

    @admin.display(description=_("parameters"))
    def parameters_display(self, task: BatchTask) -> str:
        params = task.params
        if isinstance(params, bytes):
            return _pre(f"{len(params):,} bytes: {params[:256].hex(' ')}")
        return _pre(json.dumps(params, indent=2, ensure_ascii=False))

    @admin.display(description=_("result"))
    def result_display(self, task: BatchTask) -> str:
        if task.result is None:
            return "-"
        return _pre(json.dumps(task.result, indent=2, ensure_ascii=False))

    @admin.display(description=_("error"))
    def error_display(self, task: BatchTask) -> str:
        error = task.error
        if error is None:
            return "-"
        return _pre(f"{error.type}: {error.message}\n\n{error.traceback}".strip())

    @admin.action(permissions=["cancel"], description=_("Cancel selected tasks"))
    def cancel_tasks(self, request: HttpRequest, queryset: QuerySet[BatchTask]) -> None:
        active = queryset.filter(state__in=(TaskState.NEW, TaskState.QUEUED, TaskState.RUNNING))
        done = sum(1 for task in active if task.cancel())
        skipped = queryset.count() - done
        self.message_user(
            request,
            ngettext(
                "%(count)d task cancelled or asked to stop.",
                "%(count)d tasks cancelled or asked to stop.",
                done,
            )
            % {"count": done},
            messages.SUCCESS,
        )
        if skipped:
            self.message_user(
                request,
                ngettext(
                    "%(count)d task was already finished and was left alone.",
                    "%(count)d tasks were already finished and were left alone.",
                    skipped,
                )
                % {"count": skipped},
                messages.WARNING,
            )

    @admin.action(permissions=["retry"], description=_("Retry selected failed or cancelled tasks"))
    def retry_tasks(self, request: HttpRequest, queryset: QuerySet[BatchTask]) -> None:
        finished = queryset.filter(state__in=(TaskState.FAILED, TaskState.CANCELLED))
        done = 0
        for task in finished.select_related("definition"):
            try:
                done += task.retry()
            except UniqueKeyConflict as exc:
                self.message_user(request, str(exc), messages.ERROR)
        self.message_user(
            request,
            ngettext("%(count)d task will run again.", "%(count)d tasks will run again.", done)
            % {"count": done},
            messages.SUCCESS,
        )


@admin.register(BatchWorker)
class BatchWorkerAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "state",
        "queues",
        "concurrency",
        "tasks_in_hand",
        "cpu_percent",
        "memory_display",
        "started_at",
        "last_seen_at",
    )
    list_filter = ("state",)
    search_fields = ("name", "host")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("memory"), ordering="memory_bytes")
    def memory_display(self, worker: BatchWorker) -> str:
        if worker.memory_bytes is None:
            return "-"
        return f"{worker.memory_bytes / 2**20:,.0f} MiB"


@admin.register(BatchTaskDefinition)
class BatchTaskDefinitionAdmin(admin.ModelAdmin):
    # The options a @batchtask declares, as the database now holds them.
    list_display = ("name", *(o for o in OPTIONS if o != "description"), "enabled")
    list_editable = ("max_concurrency", "enabled")
    list_filter = ("enabled", "queue", "isolation")
    search_fields = ("name", "description", "queue")
    readonly_fields = ("name", "created_at", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # definitions come from code (@batchtask)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        ensure_queue(obj.queue)


@admin.register(BatchQueue)
class BatchQueueAdmin(admin.ModelAdmin):
    list_display = ("name", "max_concurrency", "created_at")
    list_editable = ("max_concurrency",)
    search_fields = ("name",)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A queue that types still name would only be created again by the dispatcher.
        if obj is not None and BatchTaskDefinition.objects.filter(queue=obj.name).exists():
            return False
        return super().has_delete_permission(request, obj)
