"""URLs of the reference project."""

from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path

from project import views

urlpatterns = [
    path("", views.home, name="home"),
    path("favicon.ico", views.favicon),
    path("reports/<int:pk>/download/", views.report_download, name="report-download"),
    # Where reports.users_csv says its file is (result["url"]): served by the same view,
    # so only its owner gets it and MEDIA_ROOT need not be public.
    path("media/batchtasks/reports/users-<int:pk>.csv", views.report_download),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("batchtasks/", include("batchtasks.urls")),
]

# Static files for runserver and gunicorn under DJANGO_DEBUG=1 (empty otherwise: a
# production deployment serves collectstatic's STATIC_ROOT from its web server).
urlpatterns += staticfiles_urlpatterns()
