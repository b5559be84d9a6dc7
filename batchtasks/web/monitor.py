"""The staff monitor page: workers, queues, running tasks, recent failures and an hour of
throughput. ``?fragment=1`` answers only the part that ``monitor.js`` swaps in every few
seconds; both are rendered here with Django's autoescaping, so user strings stay text.
For staff who may view batch tasks (others are sent to the admin's login, or refused)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from ..services.monitor import snapshot
from .monitor_chart import build_chart

#: How often the page asks for a fresh fragment.
REFRESH_SECONDS = 3


def monitor_context() -> dict[str, Any]:
    """What both the page and its fragment render."""
    shot = snapshot()
    return {
        "snapshot": shot,
        "total": shot.total,
        "chart": build_chart(shot.now, shot.finishes),
        "refresh_ms": REFRESH_SECONDS * 1000,
    }


@never_cache
@require_safe
@staff_member_required
def page(request: HttpRequest) -> HttpResponse:
    """The monitor, or with ``?fragment=1`` its refreshable part alone."""
    # It shows every user's tasks, as the admin's list does: the same permission.
    if not request.user.has_perm("batchtasks.view_batchtask"):
        raise PermissionDenied
    context = monitor_context()
    if request.GET.get("fragment"):
        return TemplateResponse(request, "batchtasks/monitor_fragment.html", context)
    # The admin's frame (header, user links, sidebar, dark mode) around the monitor.
    context.update(admin.site.each_context(request), title=_("Batch task monitor"))
    return TemplateResponse(request, "batchtasks/monitor.html", context)
