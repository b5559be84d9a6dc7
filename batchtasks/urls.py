"""URLs of the web surfaces; a project mounts them with
``path("batchtasks/", include("batchtasks.urls"))``."""

from django.urls import path
from django.views.i18n import JavaScriptCatalog

from .web import api, metrics, monitor, push, token_page

app_name = "batchtasks"

urlpatterns = [
    # --- JSON API (batchtasks.web.api) ---
    path("api/tasks/", api.tasks, name="api-tasks"),
    path("api/tasks/active/", api.active, name="api-active"),
    path("api/tasks/active/events/", push.events, name="api-active-events"),
    path("api/tasks/<str:pk>/", api.task, name="api-task"),
    path("api/tasks/<str:pk>/cancel/", api.cancel, name="api-cancel"),
    path("api/tasks/<str:pk>/retry/", api.retry, name="api-retry"),
    path("api/types/", api.types, name="api-types"),
    path("api/schema.json", api.schema, name="api-schema"),
    # --- the signed-in user's API tokens (batchtasks.web.token_page) ---
    path("tokens/", token_page.page, name="tokens"),
    # --- staff monitor (batchtasks.web.monitor) ---
    path("monitor/", monitor.page, name="monitor"),
    # --- Prometheus endpoint (batchtasks.web.metrics) ---
    path("metrics/", metrics.scrape, name="metrics"),
    # --- the words of the indicator's script, in the request's language ---
    path("jsi18n/", JavaScriptCatalog.as_view(packages=["batchtasks"]), name="jsi18n"),
]
