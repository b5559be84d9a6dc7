"""Every response the API tests receive, checked against the API's own OpenAPI document
(read once from the live view) with openapi-core: the request and the response, matched
to the document's operation by its path template."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import reverse
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.deserializing.media_types.util import json_loads
from openapi_core.exceptions import OpenAPIError
from openapi_core.templating.paths.exceptions import OperationNotFound
from openapi_schema_validator import OAS31Validator
from werkzeug.datastructures import Headers, ImmutableMultiDict

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@cache
def schema() -> dict[str, Any]:
    """The document as the schema view serves it (read once per test run)."""
    response = Client().get(reverse("batchtasks:api-schema"))
    assert response.status_code == 200, response.content
    return json.loads(response.content)


@cache
def spec() -> OpenAPI:
    config = Config(extra_media_type_deserializers={"application/problem+json": json_loads})
    return OpenAPI.from_dict(schema(), config=config)


class OpenAPIRequest:
    """A Django request as openapi-core reads it; the path is matched to the templates."""

    def __init__(self, request: HttpRequest) -> None:
        self.request = request
        query = [(k, v) for k, values in request.GET.lists() for v in values]
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(query),
            header=Headers(list(request.headers.items())),
            cookie=ImmutableMultiDict(dict(request.COOKIES)),
        )

    host_url = "http://testserver"

    @property
    def path(self) -> str:
        return self.request.path

    @property
    def method(self) -> str:
        return (self.request.method or "").lower()

    @property
    def body(self) -> bytes:
        try:
            return self.request.body
        except RequestDataTooBig:  # the API refused it unread; so may we
            return b""

    @property
    def content_type(self) -> str:
        return str(self.request.META.get("CONTENT_TYPE", ""))


class OpenAPIResponse:
    """A Django test response as openapi-core reads it."""

    def __init__(self, response: HttpResponse) -> None:
        self.response = response

    @property
    def data(self) -> bytes:
        return self.response.content

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def headers(self) -> Headers:
        return Headers(list(self.response.headers.items()))

    @property
    def content_type(self) -> str:
        return str(self.response.get("Content-Type", ""))


def _check_405(request: OpenAPIRequest, response: HttpResponse) -> None:
    """A method the document does not list: 405, a problem, and Allow naming the listed ones."""
    assert response.status_code == 405, (request.method, request.path, response.status_code)
    assert response["Content-Type"] == "application/problem+json"
    OAS31Validator(schema()["components"]["schemas"]["Problem"]).validate(
        json.loads(response.content)
    )
    root = schema()["servers"][0]["url"]
    item = next(v for t, v in schema()["paths"].items() if _matches(root + t, request.path))
    allowed = sorted(m.upper() for m in item if m in METHODS)
    assert sorted(response["Allow"].split(", ")) == allowed


def _matches(template: str, path: str) -> bool:
    parts, wanted = template.split("/"), path.split("/")
    return len(parts) == len(wanted) and all(
        p == w or (p.startswith("{") and w.isdigit()) for p, w in zip(parts, wanted, strict=True)
    )


def request_errors(request: HttpRequest) -> list[str]:
    """What is wrong with a request by the document (empty: a valid request)."""
    try:
        spec().validate_request(OpenAPIRequest(request))
    except OperationNotFound:
        raise
    except OpenAPIError as exc:
        return [f"{type(exc).__name__} (cause: {type(exc.__cause__).__name__})"]
    return []


def check(response: HttpResponse, *, undocumented: bool = False) -> None:
    """Fail unless the response matches the document; a request the document calls
    invalid must have been refused (4xx), unless the test says it uses an extension."""
    request = OpenAPIRequest(response.wsgi_request)  # type: ignore[attr-defined]
    try:
        errors = request_errors(response.wsgi_request)  # type: ignore[attr-defined]
    except OperationNotFound:
        _check_405(request, response)
        return
    if errors and not undocumented:
        assert 400 <= response.status_code < 500, (response.status_code, errors)
    spec().validate_response(request, OpenAPIResponse(response))


class ApiClient:
    """A Django test client whose every response is checked by ``check``."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._undocumented = False

    @contextmanager
    def undocumented(self) -> Iterator[None]:
        """Requests inside may use accepted extensions (comma lists) the schema lacks."""
        self._undocumented = True
        try:
            yield
        finally:
            self._undocumented = False

    def _checked(self, method: str, *args: Any, **kwargs: Any) -> HttpResponse:
        response = getattr(self.client, method)(*args, **kwargs)
        check(response, undocumented=self._undocumented)
        return response

    def get(self, *args: Any, **kwargs: Any) -> HttpResponse:
        return self._checked("get", *args, **kwargs)

    def post(self, path: str, data: Any = None, **kwargs: Any) -> HttpResponse:
        kwargs.setdefault("content_type", "application/json")
        return self._checked("post", path, data, **kwargs)

    def put(self, *args: Any, **kwargs: Any) -> HttpResponse:
        return self._checked("put", *args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> HttpResponse:
        return self._checked("delete", *args, **kwargs)

    def force_login(self, user: Any) -> None:
        self.client.force_login(user)

    def logout(self) -> None:
        self.client.logout()
