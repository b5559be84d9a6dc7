"""The OpenAPI 3.1 document of the JSON API, built from the code (the URLs, the states,
the problems, the submittable types, the limits) so that it stays true."""

from __future__ import annotations

import posixpath
from typing import Any

from django.conf import settings
from django.urls import reverse

from ..core.registry import registry
from ..core.states import PRIORITY_MAX, PRIORITY_MIN, STATE_CODES, TaskState
from . import api_query, api_submit
from .indicator import TOKEN_COOKIE
from .problems import PROBLEMS, TYPE_PREFIX
from .serialize import BIGINT_MAX

Schema = dict[str, Any]
JSON = "application/json"
PROBLEM = "application/problem+json"
NO_NUL = "^[^\u0000]*$"  # PostgreSQL text cannot hold NUL


def ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def nullable(kind: str, **extra: Any) -> Schema:
    return {"type": [kind, "null"], **extra}


TIME = {"type": "string", "format": "date-time"}

TASK: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "type": {"type": "string"},
        "description": {"type": "string"},
        "owner": nullable("string", description="The owner's username; null: a system task."),
        "state": {"type": "string", "enum": list(TaskState.values)},
        "state_code": {
            "type": "integer",
            "enum": sorted(set(STATE_CODES.values())),
            "description": "new/blocked 1, queued 2, running 3, succeeded 4, "
            "failed/cancelled/skipped 5",
        },
        "state_label": {"type": "string"},
        "priority": {"type": "integer", "minimum": PRIORITY_MIN, "maximum": PRIORITY_MAX},
        "base_priority": nullable(
            "integer",
            minimum=PRIORITY_MIN,
            maximum=PRIORITY_MAX,
            description="The priority it was given, if priority aging (PRIORITY_AGING) has "
            "raised `priority` since; null: never raised.",
        ),
        "concurrency_key": {
            "type": "string",
            "description": 'Its key under its type\'s max_concurrency_per_key ("": none).',
        },
        "rate_key": {
            "type": "string",
            "description": 'Its key under its type\'s rate_limit ("": the type as a whole).',
        },
        "progress_percent": {"type": "integer", "minimum": 0, "maximum": 100},
        "progress_message": {"type": "string"},
        "attempt": {"type": "integer", "minimum": 1},
        "cancel_requested": {"type": "boolean"},
        "created_at": TIME,
        "queued_at": nullable("string", format="date-time"),
        "started_at": nullable("string", format="date-time"),
        "finished_at": nullable("string", format="date-time"),
        "updated_at": TIME,
        "result": {"description": "What the task returned: any JSON value, or null."},
        "error": {"oneOf": [{"type": "null"}, ref("schemas", "TaskError")]},
        "can_cancel": {"type": "boolean"},
        "can_retry": {"type": "boolean"},
        "url": {"type": "string", "format": "uri-reference"},
        "pending_parents": {
            "type": "integer",
            "minimum": 0,
            "description": "How many parents (depends_on) a blocked task still waits for.",
        },
        "on_parent_failure": {"type": "string", "enum": ["skip", "run"]},
    },
}
TASK["required"] = list(TASK["properties"])
_IDS = {"type": "array", "items": {"type": "integer", "minimum": 1}}
# Only in the answers about one task (getTask, submitTask): not in lists.
TASK["properties"]["parents"] = {**_IDS, "description": "Its depends_on, in order."}
TASK["properties"]["children"] = {**_IDS, "description": "The tasks that depend on it."}

TASK_ERROR: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "message"],
    "properties": {
        "type": {"type": "string"},
        "message": {"type": "string"},
        "traceback": {"type": "string", "description": "For staff only."},
    },
}

PROBLEM_SCHEMA: Schema = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "enum": [TYPE_PREFIX + slug for slug in PROBLEMS]},
        "title": {"type": "string"},
        "status": {"type": "integer", "enum": sorted({s for s, _ in PROBLEMS.values()})},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def _submit_request() -> Schema:
    limits = api_submit.TEXT_LIMITS
    web_types = [spec.name for spec in registry if spec.web is not False]
    text = {"type": "string", "pattern": NO_NUL}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["type"],
        "properties": {
            "type": {**text, "enum": web_types, "description": "GET api/types/ lists yours."},
            "params": nullable("object", description="The task's parameters."),
            "priority": nullable(
                "integer",
                minimum=PRIORITY_MIN,
                maximum=PRIORITY_MAX,
                description="Null: the type's default. Above it needs the permission "
                f"{api_submit.RAISE_PRIORITY} (403 permission-denied otherwise).",
            ),
            "description": {**text, "type": ["string", "null"], "maxLength": limits["description"]},
            "run_after": {
                "anyOf": [
                    TIME,
                    {"type": "number", "minimum": 0, "maximum": api_submit.RUN_AFTER_MAX_SECONDS},
                    {"type": "null"},
                ],
                "description": "A time with an offset, or a delay in seconds.",
            },
            "unique_key": {**text, "type": ["string", "null"], "maxLength": limits["unique_key"]},
            "concurrency_key": {
                **text,
                "type": ["string", "null"],
                "maxLength": limits["concurrency_key"],
                "description": "At most max_concurrency_per_key tasks of the type with the "
                "same key run at once; ignored by types without that limit.",
            },
            "rate_key": {
                **text,
                "type": ["string", "null"],
                "maxLength": limits["rate_key"],
                "description": "The type's rate_limit counts starts per key; null: the "
                "type as a whole.",
            },
            "depends_on": {
                "type": ["array", "null"],
                "items": {"type": "integer", "minimum": 1, "maximum": BIGINT_MAX},
                "maxItems": api_submit.DEPENDS_ON_MAX,
                "description": "Ids of tasks you can see: the task waits (blocked) until "
                "every one is final.",
            },
            "on_parent_failure": {
                "type": ["string", "null"],
                "enum": ["skip", "run", None],
                "description": "skip (default): a parent that fails, is cancelled or skipped "
                "skips the task; run: it runs once every parent is final.",
            },
        },
    }


def _problem(*slugs: str, headers: tuple[str, ...] = ()) -> Schema:
    """A response of these problems (one status), naming exactly their types."""
    (status,) = {PROBLEMS[slug][0] for slug in slugs}
    schema = {
        "allOf": [ref("schemas", "Problem")],
        "properties": {
            "type": {"enum": [TYPE_PREFIX + slug for slug in slugs]},
            "status": {"const": status},
        },
    }
    response: Schema = {
        "description": ", ".join(slugs) + ".",
        "content": {PROBLEM: {"schema": schema}},
    }
    if headers:
        response["headers"] = {h: ref("headers", h) for h in headers}
    return response


def _responses() -> Schema:
    return {
        "Invalid": _problem("bad-json", "invalid-request", "unknown-type"),
        "Unauthorized": _problem("not-authenticated", headers=("WWW-Authenticate",)),
        "Forbidden": _problem(
            "csrf-failed", "permission-denied", "not-submittable", "insufficient-scope"
        ),
        "NotFound": _problem("not-found"),
        "Conflict": _problem("wrong-state", "unique-key-conflict"),
        "TooLarge": _problem("params-too-large"),
        "UnsupportedMediaType": _problem("unsupported-media-type"),
        "OneTask": {
            "description": "The task.",
            "content": {JSON: {"schema": ref("schemas", "Task")}},
        },
    }


def _query(name: str, schema: Schema, description: str, **extra: Any) -> Schema:
    return {"name": name, "in": "query", "schema": schema, "description": description, **extra}


def _list_parameters() -> list[Schema]:
    ids = {"type": "integer", "minimum": 1, "maximum": BIGINT_MAX}
    return [
        _query(
            "state",
            {"type": "array", "items": {"type": "string", "enum": list(TaskState.values)}},
            "Only tasks in these states (repeat it, or a comma list).",
            explode=True,
        ),
        _query("type", {"type": "string", "pattern": NO_NUL}, "Only tasks of this type."),
        _query("since", TIME, "Only tasks changed after this time (updated_at)."),
        _query(
            "id",
            {"type": "array", "items": ids, "maxItems": api_query.IDS_MAX},
            "Only these tasks (repeat it, or a comma list).",
            explode=True,
        ),
        _query(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": api_query.LIMIT_MAX},
            f"Tasks per page (default {api_query.LIMIT_DEFAULT}).",
        ),
        _query("cursor", {"type": "string"}, "From a 'next' link."),
        _query(
            "owner",
            {"type": "string", "pattern": NO_NUL},
            "Another user's tasks (needs batchtasks.view_all_batchtasks).",
        ),
        _query(
            "all",
            {"type": "string", "enum": ["1", "0", "true", "false"]},
            "Every user's tasks (needs batchtasks.view_all_batchtasks).",
        ),
    ]


#: Who may call an operation: an API token of this scope (or wider), Basic, a session.
READ: list[Schema] = [{"bearer": ["read"]}, {"basic": []}, {"session": []}]
SUBMIT: list[Schema] = [{"bearer": ["submit"]}, {"basic": []}, {"session": []}]


def _operation(
    summary: str, ok: Schema, *problems: str, security: list[Schema] = READ, **extra: Any
) -> Schema:
    extra["security"] = security
    responses: Schema = {"401": ref("responses", "Unauthorized"), **ok}
    codes = {"Invalid": "400", "Forbidden": "403", "NotFound": "404", "Conflict": "409"}
    codes.update(TooLarge="413", UnsupportedMediaType="415")
    for name in problems:
        responses[codes[name]] = ref("responses", name)
    return {"summary": summary, "responses": dict(sorted(responses.items())), **extra}


def _json_ok(status: str, description: str, schema: Schema, **headers: Schema) -> Schema:
    response: Schema = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return {status: response}


def _path(name: str, root: str) -> str:
    """The path of a URL name below the API's root, with ``{id}`` for a task id."""
    args = [_SAMPLE_ID] if name in ("api-task", "api-cancel", "api-retry") else []
    url = reverse(f"batchtasks:{name}", args=args).replace(f"/{_SAMPLE_ID}/", "/{id}/")
    return url.removeprefix(root)


_SAMPLE_ID = 987654321


def _tasks() -> Schema:
    submitted = _json_ok(
        "201",
        "Submitted.",
        ref("schemas", "Task"),
        Location={"schema": {"type": "string"}, "required": True},
    )
    held = _json_ok(
        "200", "The caller's unfinished task with this unique_key.", ref("schemas", "Task")
    )
    return {
        "get": _operation(
            "The caller's tasks, newest first, a page at a time.",
            _json_ok("200", "A page of tasks.", ref("schemas", "TaskList")),
            "Invalid",
            "Forbidden",
            operationId="listTasks",
            parameters=_list_parameters(),
        ),
        "post": _operation(
            "Submit a task; the caller owns it.",
            {**submitted, **held},
            "Invalid",
            "Forbidden",
            "Conflict",
            "TooLarge",
            "UnsupportedMediaType",
            operationId="submitTask",
            security=SUBMIT,
            requestBody={
                "required": True,
                "content": {JSON: {"schema": ref("schemas", "SubmitRequest")}},
            },
        ),
    }


def _one_task(operation_id: str, summary: str, *problems: str) -> Schema:
    task_id = {"name": "id", "in": "path", "required": True}
    task_id["schema"] = {"type": "integer", "minimum": 1, "maximum": BIGINT_MAX}
    method = "get" if operation_id == "getTask" else "post"
    security = READ if method == "get" else SUBMIT
    ok = {"200": ref("responses", "OneTask")}
    parameters = [task_id]
    if operation_id == "cancelTask":
        cascade = "true: also cancel the tasks waiting (blocked) for it, transitively."
        parameters.append(_query("cascade", {"type": "boolean"}, cascade))
    return {
        method: _operation(
            summary,
            ok,
            *problems,
            "NotFound",
            security=security,
            operationId=operation_id,
            parameters=parameters,
        )
    }


def _paths(root: str) -> Schema:
    types = {"type": "array", "items": ref("schemas", "TaskType")}
    schema = {
        "summary": "This document.",
        "operationId": "getSchema",
        "security": [],
        "responses": _json_ok("200", "OpenAPI 3.1.", {"type": "object"}),
    }
    return {
        _path("api-tasks", root): _tasks(),
        _path("api-active", root): {"get": _active()},
        _path("api-task", root): _one_task("getTask", "One task."),
        _path("api-cancel", root): _one_task(
            "cancelTask",
            "Cancel a waiting task, or ask a running one to stop.",
            "Forbidden",
            "Conflict",
            "UnsupportedMediaType",
        ),
        _path("api-retry", root): _one_task(
            "retryTask",
            "Run a failed or cancelled task again.",
            "Forbidden",
            "Conflict",
            "UnsupportedMediaType",
        ),
        _path("api-types", root): {
            "get": _operation(
                "The task types the caller may submit.",
                _json_ok("200", "Types.", types),
                operationId="listTypes",
            )
        },
        _path("api-schema", root): {"get": schema},
    }


def _active() -> Schema:
    etag = {"schema": {"type": "string"}, "required": True, "description": 'Weak: W/"…".'}
    token = {
        "schema": {"type": "string"},
        "description": "The poll token (batchtasks_poll: HttpOnly, SameSite=Strict, path: "
        "this URL) to a session's caller, when INDICATOR_TOKEN_SECONDS is on.",
    }
    ok = _json_ok("200", "The caller's active tasks.", ref("schemas", "Active"), ETag=etag)
    ok["200"]["headers"]["Set-Cookie"] = token
    ok["304"] = {
        "description": "Unchanged since If-None-Match.",
        "headers": {"ETag": etag, "Set-Cookie": token},
    }
    header = {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}}
    header["description"] = "The ETag of the last answer."
    cookie = {"name": TOKEN_COOKIE, "in": "cookie", "schema": {"type": "string"}}
    cookie["description"] = (
        "The poll token of an earlier answer: with If-None-Match and the session cookie, "
        "an unchanged answer is decided in one query. Valid for nothing else."
    )
    return _operation(
        "The caller's unfinished tasks and those finished in the last recent_seconds.",
        ok,
        operationId="activeTasks",
        parameters=[header, cookie],
        # The indicator of signed-in pages: API tokens are refused (401).
        security=[{"basic": []}, {"session": []}],
    )


def _components() -> Schema:
    return {
        "schemas": {
            "Task": TASK,
            "TaskError": TASK_ERROR,
            "Problem": PROBLEM_SCHEMA,
            "SubmitRequest": _submit_request(),
            "TaskList": {
                "type": "object",
                "additionalProperties": False,
                "required": ["results", "next"],
                "properties": {
                    "results": {"type": "array", "items": ref("schemas", "Task")},
                    "next": nullable("string", format="uri-reference"),
                },
            },
            "Active": {
                "type": "object",
                "additionalProperties": False,
                "required": ["tasks", "recent_seconds"],
                "properties": {
                    "tasks": {"type": "array", "items": ref("schemas", "Task")},
                    "recent_seconds": {"type": "integer", "minimum": 1},
                },
            },
            "TaskType": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "description", "max_concurrency_per_key", "rate_limit"],
                "properties": {
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "max_concurrency_per_key": nullable("integer", minimum=1),
                    "rate_limit": {
                        "type": "string",
                        "description": "'N/s', 'N/m' or 'N/h'; \"\": no rate limit.",
                    },
                },
            },
        },
        "responses": _responses(),
        "headers": {
            "WWW-Authenticate": {
                "schema": {"type": "string"},
                "required": True,
                "description": 'Basic realm="batchtasks", or Session realm="batchtasks" '
                "for requests with X-Requested-With: XMLHttpRequest; "
                'Bearer realm="batchtasks", error="invalid_token" for a token that is '
                "unknown, expired or revoked.",
            }
        },
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A per-user API token (bt_…), made in the admin, on the "
                "tokens page or by `manage.py batchtasks token create`. Scope read: the "
                "GET operations; scope submit: also submitTask, cancelTask and retryTask "
                "(else 403 insufficient-scope). Recommended over Basic.",
            },
            "basic": {"type": "http", "scheme": "basic"},
            "session": {"type": "apiKey", "in": "cookie", "name": settings.SESSION_COOKIE_NAME},
        },
    }


def document() -> Schema:
    """The whole document; its server is where the API is mounted."""
    # The deepest folder all API URLs share, as the server: the paths stay short.
    root = posixpath.commonpath([reverse("batchtasks:api-tasks"), reverse("batchtasks:api-schema")])
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "batchtasks",
            "version": "1",
            "description": "Durable background batch tasks: submit, follow, cancel, retry. "
            "Errors are RFC 9457 problem details (application/problem+json). Session "
            "callers send the CSRF token (X-CSRFToken) with POSTs; API token (Bearer) and "
            "Basic callers need not. "
            "A POST's body is JSON sent as Content-Type: application/json, or there is "
            "none (cancel, retry); any other Content-Type is 415.",
        },
        "servers": [{"url": root}],
        "security": READ,
        "paths": _paths(root),
        "components": _components(),
    }
