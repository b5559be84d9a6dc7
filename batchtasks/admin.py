"""Admin: tasks shown read-only and escaped, with actions to cancel, retry, reprioritise
and run again; definitions and queues editable; workers listed."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import flatten_fieldsets
from django.contrib.auth import get_user_model
from django.db import router
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.cache import patch_cache_control
from django.utils.formats import number_format
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext, ngettext, ngettext_lazy
from django.utils.translation import gettext_lazy as _

from .core.exceptions import BatchTasksError, UniqueKeyConflict
from .core.registry import OPTIONS
from .core.states import FINAL_STATES, PRIORITY_MAX, PRIORITY_MIN, Priority, TaskState
from .models import (
    ApiToken,
    BatchQueue,
    BatchTask,
    BatchTaskAttempt,
    BatchTaskDefinition,
    BatchTaskOutcome,
    BatchTaskSchedule,
    BatchWorker,
    ScheduleSource,
)
from .models.queries import BatchTaskQuerySet, owners_share_database
from .services import tokens
from .services.definitions import ensure_queue
from .services.schedule_rows import DECLARED_FIELDS, check_type, retime

# What the actions say, per outcome; "%(count)d" is the number of tasks.
CANCEL_PHRASES = {
    "cancelled": ngettext_lazy("%(count)d task cancelled", "%(count)d tasks cancelled", "count"),
    "asked": ngettext_lazy(
        "%(count)d running task asked to stop", "%(count)d running tasks asked to stop", "count"
    ),
    "already_asked": ngettext_lazy(
        "%(count)d was already asked to stop", "%(count)d were already asked to stop", "count"
    ),
    "finished": ngettext_lazy(
        "%(count)d was already finished", "%(count)d were already finished", "count"
    ),
}
RETRY_PHRASES = {
    "again": ngettext_lazy(
        "%(count)d task will run again", "%(count)d tasks will run again", "count"
    ),
    "not_ended": ngettext_lazy(
        "%(count)d had not failed or been cancelled (only those can be retried)",
        "%(count)d had not failed or been cancelled (only those can be retried)",
        "count",
    ),
    "key_taken": ngettext_lazy(
        "%(count)d cannot: an unfinished task of its type holds its unique key",
        "%(count)d cannot: unfinished tasks of their types hold their unique keys",
        "count",
    ),
}
PRIORITY_PHRASES = {
    "moved": ngettext_lazy(
        "%(count)d task moved to priority %(priority)d",
        "%(count)d tasks moved to priority %(priority)d",
        "count",
    ),
    "not_waiting": ngettext_lazy(
        "%(count)d was no longer waiting (only new tasks can move)",
        "%(count)d were no longer waiting (only new tasks can move)",
        "count",
    ),
}


def report(
    request: HttpRequest, counts: Counter[str], phrases: dict, *, applied: int = 1, **values: Any
) -> None:
    """One message: how many tasks the action applied to (the first ``applied`` phrases;
    the first is said even at zero) and why it did not apply to the others."""
    done, skipped = list(phrases)[:applied], list(phrases)[applied:]
    shown = [k for k in done if counts[k]] or done[:1]
    shown += [k for k in skipped if counts[k]]
    text = "; ".join(str(phrases[k] % {"count": counts[k], **values}) for k in shown)
    level = messages.SUCCESS if any(counts[k] for k in done) else messages.WARNING
    messages.add_message(request, level, f"{text}.")


def cancel_outcome(task: BatchTask) -> str:
    """Cancel one task; which of ``CANCEL_PHRASES`` happened."""
    applied = task.cancel()
    if task.state == TaskState.CANCELLED and applied:
        return "cancelled"
    if task.state == TaskState.RUNNING:
        return "asked" if applied else "already_asked"
    return "finished"


def retry_outcome(task: BatchTask) -> str:
    """Retry one task; which of ``RETRY_PHRASES`` happened."""
    try:
        return "again" if task.retry() else "not_ended"
    except UniqueKeyConflict:
        return "key_taken"


def run_again(task: BatchTask) -> BatchTask:
    """A new task with the type, parameters, description, priority, owner and fairness
    key of ``task`` (not its unique key: the old task may still hold it)."""
    return BatchTask.submit(
        task.definition.name,
        task.params,
        owner=task.owner,
        # The priority it was given, not one aging raised it to.
        priority=task.priority if task.base_priority is None else task.base_priority,
        description=task.description,
        fairness_key=task.fairness_key,
    )


def task_links(tasks: Iterable[BatchTask]) -> str:
    """Links to the admin pages of ``tasks``."""
    return format_html_join(
        ", ",
        '<a href="{}">#{}</a>',
        ((reverse("admin:batchtasks_batchtask_change", args=[t.pk]), t.pk) for t in tasks),
    )


#: The most parents or children the change page lists (a group's ``then`` has thousands).
LINKS_SHOWN = 50


def _linked_states(tasks: QuerySet[BatchTask]) -> str:
    """Links to the first ``LINKS_SHOWN`` of ``tasks`` with their states, and how many more."""
    shown = list(tasks.only("pk", "state")[: LINKS_SHOWN + 1])
    links = format_html_join(
        ", ",
        '<a href="{}">#{}</a> ({})',
        (
            (reverse("admin:batchtasks_batchtask_change", args=[t.pk]), t.pk, t.state)
            for t in shown[:LINKS_SHOWN]
        ),
    )
    if len(shown) > LINKS_SHOWN:
        more = tasks.count() - LINKS_SHOWN
        return format_html("{}{}", links, gettext(" and %(count)s more") % {"count": more})
    return links


class PriorityForm(forms.Form):
    """The set-priority action's own form."""

    priority = forms.IntegerField(
        label=_("New priority"),
        min_value=PRIORITY_MIN,
        max_value=PRIORITY_MAX,
        initial=int(Priority.NORMAL),
        widget=forms.NumberInput(attrs={"list": "batchtasks-priorities", "autofocus": True}),
        help_text=_("From -100 to 100; higher runs first."),
    )


@admin.action(permissions=["cancel"], description=_("Cancel selected tasks"))
def cancel_tasks(modeladmin: BatchTaskAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    tasks = queryset.select_related(None).only("id", "state", "cancel_requested")
    report(request, Counter(map(cancel_outcome, tasks)), CANCEL_PHRASES, applied=2)


@admin.action(permissions=["retry"], description=_("Retry selected failed or cancelled tasks"))
def retry_tasks(modeladmin: BatchTaskAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    tasks = queryset.select_related("definition")
    report(request, Counter(map(retry_outcome, tasks)), RETRY_PHRASES)


@admin.action(permissions=["set_priority"], description=_("Set the priority of waiting tasks"))
def set_priority(
    modeladmin: BatchTaskAdmin, request: HttpRequest, queryset: QuerySet
) -> TemplateResponse | None:
    form = PriorityForm(request.POST if "apply" in request.POST else None)
    if form.is_valid():
        value = form.cleaned_data["priority"]
        tasks = queryset.select_related(None).only("id", "state", "priority")
        outcomes = Counter("moved" if t.set_priority(value) else "not_waiting" for t in tasks)
        report(request, outcomes, PRIORITY_PHRASES, priority=value)
        return None
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": _("Set the priority of batch tasks"),
        "opts": modeladmin.model._meta,
        "media": modeladmin.media,
        "form": form,
        "tasks": queryset.select_related("definition")[:100],
        "count": queryset.count(),
        "waiting": queryset.filter(state=TaskState.NEW).count(),
        "priorities": [(int(p), p.name.title()) for p in Priority],
        "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
        "select_across": request.POST.get("select_across", "0"),
        "action_checkbox_name": ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/batchtasks/batchtask/set_priority.html", context)


@admin.action(permissions=["submit"], description=_("Run selected tasks again as new tasks"))
def run_again_tasks(modeladmin: BatchTaskAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    made, errors = [], Counter[str]()
    tasks: BatchTaskQuerySet = queryset.select_related("definition", "parameters")  # type: ignore[assignment]
    for task in tasks.with_owner():
        try:
            made.append(run_again(task))
        except BatchTasksError as exc:
            errors[str(exc)] += 1
    submitted = ngettext(
        "%(count)d new task submitted:", "%(count)d new tasks submitted:", len(made)
    ) % {"count": len(made)}
    level = messages.SUCCESS if made else messages.WARNING
    messages.add_message(request, level, format_html("{} {}", submitted, task_links(made)))
    for error, count in errors.items():
        could_not = ngettext(
            "%(count)d could not be submitted:", "%(count)d could not be submitted:", count
        ) % {"count": count}
        messages.error(request, f"{could_not} {error}")


#: Most users whose names match a search, with a task database of its own.
SEARCHED_OWNERS = 1000


class OwnerFilter(admin.RelatedOnlyFieldListFilter):
    """The owners of the tasks listed, read from the users' database (which may be
    another than the tasks': no subquery across the two)."""

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> Any:
        tasks = model_admin.get_queryset(request).order_by().exclude(owner_id=None)
        ids = list(tasks.values_list("owner_id", flat=True).distinct())
        ordering = self.field_admin_ordering(field, request, model_admin)
        return field.get_choices(
            include_blank=False, limit_choices_to={"pk__in": ids}, ordering=ordering
        )


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
        "number", "outcome", "worker", "started_at", "finished_at", "error_type",
        "error_message",
    )  # fmt: skip

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EarlierOutcomeInline(admin.TabularInline):
    """Outcomes a retry replaced while their finalizers were still to run."""

    model = BatchTaskOutcome
    extra = 0
    can_delete = False
    verbose_name_plural = _("Earlier outcomes still finalized")
    fields = readonly_fields = (
        "attempt", "state", "finished_at", "finalize_state", "finalize_attempts",
        "finalize_after", "finalize_error",
    )  # fmt: skip

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _pre(value: str) -> str:
    return format_html('<pre class="batchtasks-pre">{}</pre>', value)


def _json(value: Any) -> str:
    return _pre(json.dumps(value, indent=2, ensure_ascii=False))


@admin.register(BatchTask)
class BatchTaskAdmin(admin.ModelAdmin):
    list_display = (
        "id", "state_badge", "definition", "description", "owner", "priority", "progress_bar",
        "created_at", "duration_display",
    )  # fmt: skip
    list_filter = (
        "state", "definition", PriorityFilter, ("owner", OwnerFilter),
        "finalize_state",
    )  # fmt: skip
    search_fields = ("=id", "description", "definition__name", "owner__username", "unique_key")
    list_select_related = ("definition",)  # the owner: get_queryset
    show_full_result_count = False
    date_hierarchy = "created_at"
    actions = (cancel_tasks, retry_tasks, set_priority, run_again_tasks)
    inlines = (AttemptInline, EarlierOutcomeInline)
    fieldsets = (
        (None, {"fields": (
            "definition", "state_badge", "owner", "description", "priority", "base_priority",
        )}),
        (_("Progress"), {"fields": ("progress_bar", "worker", "attempt")}),
        (_("Data"), {"fields": ("parameters_display", "result_display", "error_display")}),
        (_("Timing"), {"fields": (
            "created_at", "run_after", "queued_at", "started_at", "finished_at",
        )}),
        (_("Scheduling"), {"classes": ("collapse",), "fields": (
            "queue", "fairness_key", "unique_key", "concurrency_key", "rate_key",
            "cancel_requested", "lease_expires_at",
        )}),
        (_("Dependencies"), {"fields": (
            "parents_display", "children_display", "pending_parents", "on_parent_failure",
        )}),
        (_("Finalizers"), {"fields": (
            "finalize_state", "finalize_attempts", "finalize_after", "finalize_error")}),
    )  # fmt: skip

    class Media:
        js = ("batchtasks/admin.js",)
        css = {"all": ("batchtasks/admin.css",)}

    def get_queryset(self, request: HttpRequest) -> QuerySet[BatchTask]:
        tasks: BatchTaskQuerySet = super().get_queryset(request)  # type: ignore[assignment]
        return tasks.with_owner()

    def get_search_fields(self, request: HttpRequest) -> Any:
        fields = super().get_search_fields(request)
        if owners_share_database(router.db_for_read(BatchTask)):
            return fields
        return tuple(f for f in fields if not f.startswith("owner__"))

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[BatchTask], search_term: str
    ) -> tuple[QuerySet[BatchTask], bool]:
        found, duplicates = super().get_search_results(request, queryset, search_term)
        if not search_term or owners_share_database(queryset.db):
            return found, duplicates
        # A task database of its own: the owners whose names match, read from theirs.
        users = get_user_model()._default_manager
        match = {f"{users.model.USERNAME_FIELD}__icontains": search_term}
        ids = list(users.filter(**match).values_list("pk", flat=True)[:SEARCHED_OWNERS])
        return found | queryset.filter(owner_id__in=ids), duplicates

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return flatten_fieldsets(self.fieldsets)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # tasks come from code, the API or "run again"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("batchtasks.cancel_batchtask"))

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("batchtasks.retry_batchtask"))

    def has_set_priority_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("batchtasks.change_batchtask"))

    def has_submit_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("batchtasks.add_batchtask"))

    @admin.display(description=_("state"), ordering="state")
    def state_badge(self, task: BatchTask) -> str:
        # admin.js finds the badge by task id to update it as the task moves on.
        return format_html(
            '<span class="batchtasks-state batchtasks-state--{}" data-task-id="{}">{}</span>',
            task.state,
            task.pk,
            task.get_state_display(),
        )

    @admin.display(description=_("progress"), ordering="progress_percent")
    def progress_bar(self, task: BatchTask) -> str:
        # admin.js polls the API for the unfinished ones (data-final="0") and updates them.
        message = f" {task.progress_message}" if task.progress_message else ""
        return format_html(
            '<span class="batchtasks-progress" data-task-id="{}" data-final="{}" title="{}">'
            '<progress value="{}" max="100"></progress> '
            '<span class="batchtasks-progress-text">{}%{}</span></span>',
            task.pk,
            int(task.state in FINAL_STATES),
            task.progress_message,
            task.progress_percent,
            task.progress_percent,
            message,
        )

    @admin.display(description=_("duration"))
    def duration_display(self, task: BatchTask) -> str:
        duration = task.duration
        if duration is None:
            return "-"
        return gettext("%(seconds)s s") % {"seconds": number_format(duration.total_seconds(), 1)}

    @admin.display(description=_("parameters"))
    def parameters_display(self, task: BatchTask) -> str:
        params = task.params
        if isinstance(params, bytes):
            size = number_format(len(params), force_grouping=True)
            return _pre(
                gettext("%(size)s bytes: %(hex)s") % {"size": size, "hex": params[:256].hex(" ")}
            )
        return _json(params)

    @admin.display(description=_("result"))
    def result_display(self, task: BatchTask) -> str:
        return "-" if task.result is None else _json(task.result)

    @admin.display(description=_("depends on"))
    def parents_display(self, task: BatchTask) -> str:
        return _linked_states(task.parents()) or "-"

    @admin.display(description=_("children"))
    def children_display(self, task: BatchTask) -> str:
        return _linked_states(task.children()) or "-"

    @admin.display(description=_("error"))
    def error_display(self, task: BatchTask) -> str:
        error = task.error
        if error is None:
            return "-"
        return _pre(f"{error.type}: {error.message}\n\n{error.traceback}".strip())


@admin.register(BatchWorker)
class BatchWorkerAdmin(admin.ModelAdmin):
    list_display = (
        "name", "state", "queues", "concurrency", "tasks_in_hand", "cpu_percent",
        "memory_display", "started_at", "last_seen_at",
    )  # fmt: skip
    list_filter = ("state",)
    search_fields = ("name", "host")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("memory"), ordering="memory_bytes")
    def memory_display(self, worker: BatchWorker) -> str:
        return "-" if worker.memory_bytes is None else filesizeformat(worker.memory_bytes)


@admin.register(BatchTaskDefinition)
class BatchTaskDefinitionAdmin(admin.ModelAdmin):
    # The options a @batchtask declares, as the database now holds them.
    list_display = (
        "name",
        *(o for o in OPTIONS if o != "description"),
        "run_seconds",
        "enabled",
    )
    list_editable = ("max_concurrency", "enabled")
    list_filter = ("enabled", "queue", "isolation")
    search_fields = ("name", "description", "queue")
    readonly_fields = ("name", "function_module", "run_seconds", "created_at", "updated_at")

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


# --- API tokens -----------------------------------------------------------------------------
class ApiTokenAddForm(forms.ModelForm):
    """A new token: whose, its name and scope, and its lifetime as ``90d``/``12h``/``never``."""

    expires = forms.CharField(
        label=_("expires after"),
        initial="90d",
        max_length=20,
        help_text=_("Days, hours or minutes (90d, 12h, 30m), or never."),
    )

    class Meta:
        model = ApiToken
        fields = ("user", "name", "scope")

    def clean_expires(self) -> Any:
        try:
            return tokens.parse_lifetime(self.cleaned_data["expires"])
        except BatchTasksError as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.action(permissions=["change"], description=_("Revoke selected API tokens"))
def revoke_tokens(modeladmin: Any, request: HttpRequest, queryset: QuerySet) -> None:
    count = tokens.revoke(queryset)
    text = ngettext("%(count)d API token revoked.", "%(count)d API tokens revoked.", count)
    modeladmin.message_user(request, text % {"count": count}, messages.SUCCESS)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens per user; made here (the plaintext shown once, in the add's answer), revoked by an
    action. Only the non-secret prefix is ever shown, never the stored digest."""

    list_display = (
        "user", "name", "token_display", "scope", "created_at", "expires_at",
        "last_used_at", "state_display",
    )  # fmt: skip
    list_filter = (
        ("user", admin.RelatedOnlyFieldListFilter),
        "scope",
        ("revoked_at", admin.EmptyFieldListFilter),
    )
    search_fields = ("name", "prefix", "user__username")
    list_select_related = ("user",)
    actions = (revoke_tokens,)
    fields = (
        "user", "name", "scope", "token_display", "created_at", "expires_at",
        "last_used_at", "revoked_at",
    )  # fmt: skip
    readonly_fields = (
        "user", "scope", "token_display", "created_at", "expires_at", "last_used_at",
        "revoked_at",
    )  # fmt: skip

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return tokens.with_state(super().get_queryset(request))

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = ApiTokenAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ("user", "name", "scope", "expires") if obj is None else self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return () if obj is None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        issued = tokens.issue(obj.user, obj.name, obj.scope, form.cleaned_data["expires"])
        obj.pk, obj.prefix = issued.token.pk, issued.token.prefix
        request._batchtasks_issued_token = issued.plaintext  # type: ignore[attr-defined]

    def response_add(
        self, request: HttpRequest, obj: Any, post_url_continue: str | None = None
    ) -> HttpResponse:
        """The new token in the answer to the add itself, this once: not in a message,
        which Django may keep in a cookie until the next page."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("New API token"),
            "token": obj,
            "plaintext": request._batchtasks_issued_token,  # type: ignore[attr-defined]
        }
        response = TemplateResponse(request, "admin/batchtasks/apitoken/issued.html", context)
        patch_cache_control(response, no_store=True)
        return response

    @admin.display(description=_("token"), ordering="prefix")
    def token_display(self, token: ApiToken) -> str:
        return f"bt_{token.prefix}…"

    @admin.display(description=_("state"))
    def state_display(self, token: ApiToken) -> str:
        return tokens.state(token)


# --- schedules ------------------------------------------------------------------------------
TICKS_SHOWN = 20


class ScheduleForm(forms.ModelForm):
    """Checks that the schedule's type takes its parameters (the model checks the timing)."""

    class Meta:
        model = BatchTaskSchedule
        fields = (
            "name", "type_name", "description", "cron", "every", "timezone", "enabled",
            "params", "owner", "priority", "catch_up", "catch_up_limit", "overlap",
        )  # fmt: skip

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        # The instance takes the form's values only after clean(): check a copy with them.
        meta = BatchTaskSchedule._meta
        candidate = BatchTaskSchedule(
            **{f.attname: getattr(self.instance, f.attname) for f in meta.concrete_fields}
        )
        for name, value in data.items():
            setattr(candidate, name, value)
        try:
            check_type(candidate)
        except BatchTasksError as exc:
            raise forms.ValidationError(str(exc)) from None
        return data


@admin.action(permissions=["change"], description=_("Enable selected schedules"))
def enable_schedules(modeladmin: Any, request: HttpRequest, queryset: QuerySet) -> None:
    count = 0
    for schedule in queryset.filter(enabled=False):
        schedule.enabled = True
        retime(schedule)  # from the next tick on: what ran while disabled is not caught up
        schedule.save(update_fields=["enabled", "next_run_at"])
        count += 1
    modeladmin.message_user(
        request, ngettext("%d schedule enabled", "%d schedules enabled", count) % count
    )


@admin.action(permissions=["change"], description=_("Disable selected schedules"))
def disable_schedules(modeladmin: Any, request: HttpRequest, queryset: QuerySet) -> None:
    count = queryset.filter(enabled=True).update(enabled=False, next_run_at=None)
    modeladmin.message_user(
        request, ngettext("%d schedule disabled", "%d schedules disabled", count) % count
    )


@admin.register(BatchTaskSchedule)
class BatchTaskScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    list_display = (
        "name", "type_name", "timing_text", "enabled", "next_run_at", "last_run_at",
        "last_task_link", "source",
    )  # fmt: skip
    list_filter = ("enabled", "source", "catch_up", "overlap")
    search_fields = ("name", "type_name", "description")
    actions = (enable_schedules, disable_schedules)
    fields = (
        "name", "type_name", "description", "cron", "every", "timezone", "enabled", "params",
        "owner", "priority", "catch_up", "catch_up_limit", "overlap", "source", "next_run_at",
        "last_run_at", "last_task_link", "recent_ticks",
    )  # fmt: skip
    raw_id_fields = ("owner",)
    always_readonly = ("source", "next_run_at", "last_run_at", "last_task_link", "recent_ticks")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is not None and obj.source != ScheduleSource.ADMIN:
            # The settings (or the beat bridge) declare these; only pausing is the admin's.
            declared = tuple("owner" if f == "owner_id" else f for f in DECLARED_FIELDS)
            return ("name", *declared, *self.always_readonly)
        return self.always_readonly

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        retime(obj)  # the next tick after now, by the database's clock
        super().save_model(request, obj, form, change)

    @admin.display(description=_("when"))
    def timing_text(self, schedule: BatchTaskSchedule) -> str:
        return schedule.timing_text()

    @admin.display(description=_("last task"))
    def last_task_link(self, schedule: BatchTaskSchedule) -> str:
        if schedule.last_task_id is None:
            return "-"
        url = reverse("admin:batchtasks_batchtask_change", args=[schedule.last_task_id])
        return format_html('<a href="{}">#{}</a>', url, schedule.last_task_id)

    @admin.display(description=_("recent ticks"))
    def recent_ticks(self, schedule: BatchTaskSchedule) -> str:
        ticks = schedule.ticks.order_by("-tick")[:TICKS_SHOWN] if schedule.pk else []
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((t.tick.isoformat(), t.outcome, t.task_id or "-", t.message) for t in ticks),
        )
        return format_html("<table>{}</table>", rows) if ticks else "-"
