"""A test URLconf: a view that enqueues a ``django.tasks`` function, then the project's URLs
(admin, monitor, API) as they are."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.views.decorators.http import require_POST

from tests.django_task_surface_functions import gated


@require_POST
def enqueue_gated(request: HttpRequest) -> JsonResponse:
    """Enqueue ``gated`` with the posted label; answer the result's id and status."""
    result = gated.enqueue(request.POST["label"])
    return JsonResponse({"id": result.id, "status": str(result.status)}, status=202)


urlpatterns = [
    path("surface/enqueue/", enqueue_gated, name="surface-enqueue"),
    path("", include("project.urls")),
]
