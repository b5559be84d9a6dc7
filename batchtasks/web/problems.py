"""RFC 9457 problem details: every error the JSON API answers, one slug per kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.http import HttpResponse
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

from .serialize import dumps

CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:batchtasks:problem:"
StrOrPromise = str | Promise

#: Every problem the API answers: slug → (status, title). The OpenAPI document lists them.
PROBLEMS: dict[str, tuple[int, StrOrPromise]] = {
    "not-authenticated": (401, _("Authentication required")),
    "csrf-failed": (403, _("CSRF check failed")),
    "permission-denied": (403, _("Permission denied")),
    "insufficient-scope": (403, _("API token scope too narrow")),
    "not-found": (404, _("Not found")),
    "method-not-allowed": (405, _("Method not allowed")),
    "bad-json": (400, _("Malformed JSON body")),
    "invalid-request": (400, _("Invalid request")),
    "unknown-type": (400, _("Unknown task type")),
    "not-submittable": (403, _("Task type not submittable")),
    "params-too-large": (413, _("Parameters too large")),
    "unsupported-media-type": (415, _("Unsupported media type")),
    "unique-key-conflict": (409, _("Unique key held by another task")),
    "wrong-state": (409, _("Task is in the wrong state")),
}


@dataclass(frozen=True)
class FieldError:
    """What is wrong with one field of a request (a body key or a query parameter)."""

    field: str
    message: str


@dataclass(eq=False)  # exceptions compare and hash by identity
class Problem(Exception):
    """Raised by a view to answer with a problem; ``api_view`` turns it into the response."""

    slug: str
    detail: str
    errors: list[FieldError] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.slug in PROBLEMS, self.slug
        super().__init__(self.detail)

    @property
    def status(self) -> int:
        return PROBLEMS[self.slug][0]

    def response(self) -> HttpResponse:
        """The ``application/problem+json`` response."""
        status, title = PROBLEMS[self.slug]
        body: dict[str, Any] = {
            "type": TYPE_PREFIX + self.slug,
            "title": str(title),  # in the request's language; "type" says it for machines
            "status": status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = [{"field": e.field, "message": e.message} for e in self.errors]
        response = HttpResponse(dumps(body), status=status, content_type=CONTENT_TYPE)
        for name, value in self.headers.items():
            response[name] = value
        return response


def invalid(field_name: str, message: str) -> Problem:
    """An invalid-request problem about one field."""
    return Problem("invalid-request", message, [FieldError(field_name, message)])
