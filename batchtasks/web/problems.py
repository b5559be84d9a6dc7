"""RFC 9457 problem details: every error the JSON API answers, one slug per kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.http import HttpResponse

from .serialize import dumps

CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:batchtasks:problem:"

#: Every problem the API answers: slug → (status, title). The OpenAPI document lists them.
PROBLEMS: dict[str, tuple[int, str]] = {
    "not-authenticated": (401, "Authentication required"),
    "csrf-failed": (403, "CSRF check failed"),
    "permission-denied": (403, "Permission denied"),
    "insufficient-scope": (403, "API token scope too narrow"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "bad-json": (400, "Malformed JSON body"),
    "invalid-request": (400, "Invalid request"),
    "unknown-type": (400, "Unknown task type"),
    "not-submittable": (403, "Task type not submittable"),
    "params-too-large": (413, "Parameters too large"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "unique-key-conflict": (409, "Unique key held by another task"),
    "wrong-state": (409, "Task is in the wrong state"),
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
            "title": title,
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
