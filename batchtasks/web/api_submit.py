"""POST api/tasks/: the JSON body checked field by field, then ``BatchTask.submit``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db import router, transaction
from django.http import HttpRequest
from django.utils.formats import number_format
from django.utils.translation import gettext as _

from ..core.conf import get_settings
from ..core.exceptions import (
    InvalidParameters,
    InvalidTaskOption,
    TaskTypeDisabled,
    UnknownTaskType,
)
from ..core.params import code_only
from ..core.registry import TaskTypeSpec, registry
from ..core.states import PRIORITY_MAX, PRIORITY_MIN, UNFINISHED_STATES
from ..models import BatchTask
from ..services.definitions import get_definition
from .problems import FieldError, Problem
from .serialize import parse_timestamp

FIELDS = (
    "type",
    "params",
    "priority",
    "description",
    "run_after",
    "unique_key",
    "concurrency_key",
    "rate_key",
    "depends_on",
    "on_parent_failure",
)
#: The most parents one submit over HTTP may name.
DEPENDS_ON_MAX = 10_000
#: What a caller needs to submit above the type's default priority: the permission the
#: admin's set-priority action needs too.
RAISE_PRIORITY = "batchtasks.change_batchtask"
#: Room in a body for everything but the parameters (each limited on its own below).
ENVELOPE_BYTES = 64 * 1024
#: The longest delay ``run_after`` may give in seconds: ten years.
RUN_AFTER_MAX_SECONDS = 10 * 366 * 86400
TEXT_LIMITS = {
    "description": 500,
    "unique_key": 200,
    "type": 200,
    "concurrency_key": 200,
    "rate_key": 200,
}


@dataclass(frozen=True)
class Submission:
    """A checked submit request."""

    type: str
    params: dict[str, Any]
    priority: int | None
    description: str
    run_after: datetime | timedelta | None
    unique_key: str | None
    concurrency_key: str | None = None
    rate_key: str | None = None
    depends_on: tuple[int, ...] = ()
    on_parent_failure: str = "skip"


def may_submit(spec: TaskTypeSpec, user: Any) -> bool:
    """Whether ``user`` may submit tasks of this type over HTTP."""
    if isinstance(spec.web, str):
        return bool(user.has_perm(spec.web))
    return spec.web is True


def submittable_types(user: Any) -> list[TaskTypeSpec]:
    """The types ``user`` may submit, by name."""
    return [spec for spec in registry if may_submit(spec, user)]


def type_json(spec: TaskTypeSpec) -> dict[str, Any]:
    """A type as ``GET api/types/`` shows it: its limits from its live definition row."""
    definition = get_definition(spec.name)
    return {
        "name": spec.name,
        "description": spec.definition_values()["description"],
        "max_concurrency_per_key": definition.max_concurrency_per_key,
        "rate_limit": definition.rate_limit,
    }


def check_type(name: str, user: Any) -> TaskTypeSpec:
    """The type, or unknown-type (naming only types the caller may submit) / not-submittable."""
    try:
        spec = registry.get(name)
    except UnknownTaskType:
        names = ", ".join(s.name for s in submittable_types(user)) or _("none")
        raise Problem(
            "unknown-type",
            _("Unknown task type %(type)s. Types you may submit: %(types)s.")
            % {"type": repr(name), "types": names},
        ) from None
    if not may_submit(spec, user):
        raise Problem(
            "not-submittable",
            _("Tasks of type %(type)s cannot be submitted over HTTP.") % {"type": repr(name)},
        )
    return spec


def check_raised_priority(submission: Submission, user: Any) -> None:
    """Permission-denied, naming the field, if the submission asks for a priority above
    its type's default (the live one, the definition row's) and ``user`` may not raise
    priorities: otherwise any caller could jump every other user's fair turn."""
    if submission.priority is None:
        return
    default = get_definition(submission.type).priority
    if submission.priority <= default or user.has_perm(RAISE_PRIORITY):
        return
    message = _(
        "priority %(priority)s is above the default of %(type)s (%(default)s); a higher "
        "one needs the permission %(permission)s."
    ) % {
        "priority": submission.priority,
        "type": repr(submission.type),
        "default": default,
        "permission": RAISE_PRIORITY,
    }
    raise Problem("permission-denied", message, [FieldError("priority", message)])


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_body(request: HttpRequest) -> dict[str, Any]:
    """The request's JSON object, or bad-json / params-too-large / invalid-request."""
    limit = get_settings().MAX_PARAMS_BYTES + ENVELOPE_BYTES
    too_large = Problem(
        "params-too-large",
        _(
            "The body is larger than %(limit)s bytes; store large data elsewhere and pass "
            "a reference to it in params."
        )
        % {"limit": number_format(limit, force_grouping=True)},
    )
    length = request.META.get("CONTENT_LENGTH") or "0"
    if length.isdigit() and int(length) > limit:
        raise too_large  # before reading it
    try:
        raw = request.body
    except RequestDataTooBig:
        raise too_large from None
    if len(raw) > limit:
        raise too_large
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        # A lone surrogate ("\ud800") decodes, but no database can store it.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, ValueError, RecursionError) as exc:
        raise Problem(
            "bad-json", _("The body is not valid UTF-8 JSON: %(error)s") % {"error": exc}
        ) from None
    if not isinstance(data, dict):
        raise Problem("invalid-request", _("The body must be a JSON object."))
    return data


def _text(data: dict[str, Any], name: str, errors: list[FieldError]) -> str | None:
    value = data.get(name)
    limit = TEXT_LIMITS[name]
    if value is None:
        return None
    if not isinstance(value, str):
        errors.append(FieldError(name, _("%(field)s must be a string.") % {"field": name}))
    elif len(value) > limit:
        errors.append(
            FieldError(
                name,
                _("%(field)s is %(length)s characters; the limit is %(limit)s.")
                % {"field": name, "length": len(value), "limit": limit},
            )
        )
    elif "\x00" in value:
        errors.append(
            FieldError(name, _("%(field)s must not contain NUL characters.") % {"field": name})
        )
    else:
        return value
    return None


def _priority(value: Any, errors: list[FieldError]) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append(FieldError("priority", _("priority must be an integer.")))
    elif not PRIORITY_MIN <= value <= PRIORITY_MAX:
        errors.append(
            FieldError(
                "priority",
                _("priority must be from %(min)s to %(max)s.")
                % {"min": PRIORITY_MIN, "max": PRIORITY_MAX},
            )
        )
    else:
        return value
    return None


def _run_after(value: Any, errors: list[FieldError]) -> datetime | timedelta | None:
    if value is None:
        return None
    if isinstance(value, str):
        when = parse_timestamp(value)
        if when is not None:
            return when
    elif (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and 0 <= value <= RUN_AFTER_MAX_SECONDS
    ):
        return timedelta(seconds=value)
    errors.append(
        FieldError(
            "run_after",
            _(
                "run_after must be an ISO 8601 time with an offset (2026-11-30T14:00:00Z) "
                "or a delay in seconds from 0 to %(max)s."
            )
            % {"max": RUN_AFTER_MAX_SECONDS},
        )
    )
    return None


def _depends_on(value: Any, errors: list[FieldError]) -> tuple[int, ...]:
    if value is None:
        return ()
    if (
        isinstance(value, list)
        and len(value) <= DEPENDS_ON_MAX
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return tuple(value)
    errors.append(
        FieldError(
            "depends_on",
            _("depends_on must be a list of at most %(max)s task ids (positive integers).")
            % {"max": number_format(DEPENDS_ON_MAX, force_grouping=True)},
        )
    )
    return ()


def _on_parent_failure(value: Any, errors: list[FieldError]) -> str:
    if value is None or value in ("skip", "run"):
        return value or "skip"
    errors.append(FieldError("on_parent_failure", _('on_parent_failure must be "skip" or "run".')))
    return "skip"


def check_parents(submission: Submission, visible: Any) -> None:
    """Invalid-request naming the parents in ``depends_on`` that are not among the
    ``visible`` tasks (a queryset of those the caller may see): a child reads its
    parents' results, so nobody may depend on a task they cannot see."""
    if not submission.depends_on:
        return
    seen = set(visible.filter(pk__in=submission.depends_on).values_list("pk", flat=True))
    unknown = [pk for pk in submission.depends_on if pk not in seen]
    if unknown:
        shown = ", ".join(str(pk) for pk in unknown[:10])
        message = _("depends_on names tasks that you cannot see or that do not exist: %(ids)s.") % {
            "ids": shown
        }
        raise Problem("invalid-request", message, [FieldError("depends_on", message)])


def parse_submission(data: dict[str, Any]) -> Submission:
    """The checked fields of a submit body, or invalid-request naming every bad field."""
    errors = [
        FieldError(
            key,
            _("Unknown field %(field)s; the fields are %(fields)s.")
            % {"field": repr(key), "fields": ", ".join(FIELDS)},
        )
        for key in data
        if key not in FIELDS
    ]
    if "type" not in data:
        errors.append(FieldError("type", _("type is required.")))
    type_name = _text(data, "type", errors)
    params = data.get("params")
    if params is not None and not isinstance(params, dict):
        errors.append(FieldError("params", _("params must be a JSON object.")))
    submission = Submission(
        type=type_name or "",
        params=params or {},
        priority=_priority(data.get("priority"), errors),
        description=_text(data, "description", errors) or "",
        run_after=_run_after(data.get("run_after"), errors),
        unique_key=_text(data, "unique_key", errors),
        concurrency_key=_text(data, "concurrency_key", errors),
        rate_key=_text(data, "rate_key", errors),
        depends_on=_depends_on(data.get("depends_on"), errors),
        on_parent_failure=_on_parent_failure(data.get("on_parent_failure"), errors),
    )
    if errors:
        raise Problem("invalid-request", " ".join(e.message for e in errors), errors)
    return submission


def _params_problem(exc: InvalidParameters, submission: Submission) -> Problem:
    size = len(json.dumps(submission.params, ensure_ascii=False, separators=(",", ":")).encode())
    if size > get_settings().MAX_PARAMS_BYTES:
        return Problem("params-too-large", str(exc))
    if exc.fields:  # the type's declared parameters: one error per bad field
        fields = [FieldError(f"params.{k}" if k else "params", v) for k, v in exc.fields.items()]
        return Problem("invalid-request", str(exc), fields)
    return Problem("invalid-request", str(exc), [FieldError("params", str(exc))])


def _check_code_only(submission: Submission) -> None:
    """Invalid-request naming each parameter only code may set (``param(web=False)``)."""
    refused = code_only(registry.get(submission.type).plugin.Params, submission.params)
    if refused:
        errors = [FieldError(f"params.{name}", why) for name, why in refused.items()]
        detail = " ".join(f"{e.field}: {e.message}." for e in errors)
        raise Problem("invalid-request", detail, errors)


def _holder(submission: Submission, db: str) -> int | None:
    """The id of the unfinished task that holds the submission's unique key, if any."""
    if submission.unique_key is None:
        return None
    return (
        BatchTask.objects.using(db)
        .filter(
            definition__name=submission.type,
            unique_key=submission.unique_key,
            state__in=UNFINISHED_STATES,
        )
        .values_list("pk", flat=True)
        .first()
    )


def submit(submission: Submission, user: Any) -> tuple[BatchTask, bool]:
    """Submit for ``user``: the task and whether it is new (else the caller's own task that
    holds the unique key). Nothing is written when a problem is raised."""
    _check_code_only(submission)
    db = router.db_for_write(BatchTask)
    with transaction.atomic(using=db):
        holder = _holder(submission, db)
        try:
            task = BatchTask.submit(
                submission.type,
                submission.params,
                owner=user,
                priority=submission.priority,
                description=submission.description,
                run_after=submission.run_after,
                unique_key=submission.unique_key,
                on_conflict="return",
                concurrency_key=submission.concurrency_key,
                rate_key=submission.rate_key,
                depends_on=list(submission.depends_on) or None,
                on_parent_failure=submission.on_parent_failure,
                using=db,
            )
        except InvalidParameters as exc:
            raise _params_problem(exc, submission) from None
        except TaskTypeDisabled:
            raise Problem(
                "not-submittable",
                _("Task type %(type)s is disabled for now.") % {"type": repr(submission.type)},
            ) from None
        except (InvalidTaskOption, UnknownTaskType) as exc:
            raise Problem("invalid-request", str(exc)) from None
        if task.owner_id != user.pk:
            # Leaving the block by an exception rolls back what submit did to that task
            # (it raises a waiting task's priority to the newcomer's).
            raise Problem(
                "unique-key-conflict",
                _(
                    "Another user's unfinished task of this type holds this unique_key; "
                    "choose another key or wait until that task has finished."
                ),
            )
    # A task that held the key before this submit is the caller's own: not new. (Two
    # concurrent submits of one key by one user may both be told 201.)
    return task, task.pk != holder
