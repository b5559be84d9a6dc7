"""Pages of the reference project: a home page that runs an export and hands out the file,
and the icon browsers ask for."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.templatetags.static import static
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_safe

from batchtasks import BatchTask, TaskState
from plugins.reports import EXPORT_PERMISSION

REPORT_TYPE = "reports.users_csv"


@require_safe
@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The running-tasks indicator and, for users who may export them, a button that
    exports the users as CSV."""
    context = {
        "may_export": request.user.has_perm(EXPORT_PERMISSION),
        "export_permission": EXPORT_PERMISSION,
        "export_texts": export_texts(),
    }
    return render(request, "home.html", context)


def export_texts() -> dict[str, str]:
    """What the export button's script says, in the request's language; ``%(name)s``
    placeholders are filled in by the script."""
    return {
        "description": _("Export users as CSV"),
        "submitting": _("Submitting the export…"),
        "refused": _("The export could not be submitted (HTTP %(status)s)."),
        "failed": _("The export could not be submitted: %(error)s"),
        "state": _("Export #%(id)s: %(state)s"),
        "progress": _("Export #%(id)s: %(state)s, %(percent)s"),
        # The script picks by rows == 1: every language here has English's two forms.
        "ready_one": ngettext(
            "Export #%(id)s is ready: %(rows)s user.", "Export #%(id)s is ready: %(rows)s users.", 1
        ),
        "ready_other": ngettext(
            "Export #%(id)s is ready: %(rows)s user.", "Export #%(id)s is ready: %(rows)s users.", 2
        ),
        "ready": _("Export #%(id)s is ready."),
        "ended": _("Export #%(id)s: %(state)s: %(error)s"),
        "no_result": _("no result"),
    }


@require_safe
def favicon(request: HttpRequest) -> HttpResponseRedirect:
    """The icon that browsers ask for on their own, for the pages that name none (the
    project's pages name it with ``<link rel="icon">``)."""
    return HttpResponseRedirect(static("favicon.svg"))


@require_safe
@login_required
def report_download(request: HttpRequest, pk: int) -> FileResponse:
    """The CSV of the signed-in user's own succeeded export (404 for anything else), while
    they still may export users (403 otherwise: it holds every user's name and email)."""
    if not request.user.has_perm(EXPORT_PERMISSION):
        raise PermissionDenied
    task = get_object_or_404(
        BatchTask,
        pk=pk,
        owner=request.user,
        definition__name=REPORT_TYPE,
        state=TaskState.SUCCEEDED,
    )
    path = report_path(task.result)
    if path is None:
        raise Http404(_("The report file is gone."))
    return FileResponse(path.open("rb"), as_attachment=True, filename=path.name)


def report_path(result: object) -> Path | None:
    """The report file a result names under MEDIA_ROOT; None if it is missing or the
    stored path points anywhere else (a result is data, not a trusted path)."""
    if not isinstance(result, dict) or not isinstance(result.get("path"), str):
        return None
    media = Path(settings.MEDIA_ROOT).resolve()
    path = (media / result["path"]).resolve()
    if not path.is_relative_to(media) or not path.is_file():
        return None
    return path
