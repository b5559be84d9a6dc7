"""The JSON API under ``/batchtasks/api/`` (web-contract.md): list, submit, one task,
cancel, retry, the indicator's poll, the submittable types and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext as _

from ..core.conf import get_settings
from ..core.exceptions import UniqueKeyConflict
from ..core.states import FINAL_STATES
from ..models import BatchTask
from . import api_query, api_submit, indicator, openapi
from .auth import api_view
from .problems import Problem
from .serialize import BIGINT_MAX, Viewer, dumps, task_json, with_links

FINAL = frozenset(FINAL_STATES)
JSON = "application/json"


def _json(data: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(dumps(data), status=status, content_type=JSON)


def _visible(viewer: Viewer, pk: int | str) -> BatchTask:
    """The task if the caller may see it; not-found otherwise (whether or not it exists).

    ``pk`` may be any path segment: the answer to one that is no task id is a problem too.
    """
    text = str(pk)
    valid = api_query.NUMBER.fullmatch(text) and 0 < int(text) <= BIGINT_MAX
    task = viewer.tasks().filter(pk=int(text)).first() if valid else None
    if task is None:
        raise Problem("not-found", _("There is no such task that you can see."))
    return task


@api_view("GET", "POST")
def tasks(request: HttpRequest) -> HttpResponse:
    """GET: the caller's tasks, newest first, a page at a time. POST: submit a task."""
    viewer = Viewer(request.user)
    if request.method == "POST":
        return _submit(request, viewer)
    query = api_query.parse_list_query(request.GET)
    page = list(api_query.select(query, viewer))
    return _json(
        {
            "results": [task_json(t, viewer) for t in page[: query.limit]],
            "next": api_query.next_link(request, page, query),
        }
    )


def _submit(request: HttpRequest, viewer: Viewer) -> HttpResponse:
    submission = api_submit.parse_submission(api_submit.read_body(request))
    api_submit.check_type(submission.type, request.user)
    api_submit.check_raised_priority(submission, request.user)
    api_submit.check_parents(submission, viewer.tasks())
    submitted, created = api_submit.submit(submission, request.user)
    body = with_links(task_json(_visible(viewer, submitted.pk), viewer))
    response = _json(body, status=201 if created else 200)
    if created:
        response["Location"] = body["url"]
    return response


@api_view("GET")
def task(request: HttpRequest, pk: int | str) -> HttpResponse:
    """One task, with the ids of its parents and children."""
    viewer = Viewer(request.user)
    return _json(with_links(task_json(_visible(viewer, pk), viewer)))


@api_view("POST")
def cancel(request: HttpRequest, pk: int | str) -> HttpResponse:
    """Cancel a waiting task, or ask a running one to stop."""
    viewer = Viewer(request.user)
    target = _visible(viewer, pk)
    if not viewer.may_cancel(target):
        raise Problem("permission-denied", _("Cancelling others' tasks needs cancel_batchtask."))
    cascade = request.GET.get("cascade", "").lower() in ("1", "true", "yes")
    applied = target.state not in FINAL and target.cancel(cascade=cascade)
    # Not applied to an unfinished task: it runs and was already asked to stop.
    if not applied and target.state in FINAL:
        raise Problem(
            "wrong-state",
            _("Task %(id)s has already finished (%(state)s).")
            % {"id": target.pk, "state": target.state},
        )
    return _json(task_json(_visible(viewer, pk), viewer))


@api_view("POST")
def retry(request: HttpRequest, pk: int | str) -> HttpResponse:
    """Run a failed or cancelled task again, as its next attempt."""
    viewer = Viewer(request.user)
    target = _visible(viewer, pk)
    if not viewer.may_retry(target):
        raise Problem("permission-denied", _("Retrying others' tasks needs retry_batchtask."))
    try:
        applied = target.retry()
    except UniqueKeyConflict as exc:
        raise Problem("unique-key-conflict", str(exc)) from None
    if not applied:
        raise Problem(
            "wrong-state",
            _("Task %(id)s is %(state)s; only failed or cancelled tasks retry.")
            % {"id": target.pk, "state": target.state},
        )
    return _json(task_json(_visible(viewer, pk), viewer))


# A page's script polls it with the session: an API token is refused here.
@api_view("GET", shortcut=indicator.answer_by_token, bearer=False)
def active(request: HttpRequest) -> HttpResponse:
    """The indicator's poll: the caller's unfinished tasks and those finished lately.

    An unchanged answer is a 304 decided without building it (batchtasks.web.indicator):
    by the poll token in one query, else through the session and one more query.
    """
    recent = get_settings().INDICATOR_RECENT_SECONDS
    if "If-None-Match" in request.headers and indicator.CHANGED not in request.META:
        watcher = indicator.Watcher.of(request.user)
        tag = indicator.etag(watcher, indicator.digest(watcher.user_id, recent), recent)
        if indicator.matches(request.headers["If-None-Match"], tag):
            response = indicator.not_modified(tag)
            indicator.issue_token(request, response)
            return response
    body, tag = indicator.full_answer(request.user)
    response = HttpResponse(body, content_type=JSON)
    response["ETag"] = tag
    indicator.issue_token(request, response)
    return response


@api_view("GET")
def types(request: HttpRequest) -> HttpResponse:
    """The task types the caller may submit: ``[{name, description, max_concurrency_per_key,
    rate_limit}]``, the limits as the definition rows hold them now."""
    specs = api_submit.submittable_types(request.user)
    return _json([api_submit.type_json(spec) for spec in specs])


@api_view("GET", public=True)
def schema(request: HttpRequest) -> HttpResponse:
    """The OpenAPI 3.1 document of this API; anyone may read it."""
    return _json(openapi.document())
