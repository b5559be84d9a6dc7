"""WSGI entry point of the reference project: Django, with the indicator's unchanged poll
answered ahead of it (batchtasks.web.fastpoll)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

application = get_wsgi_application()

from batchtasks.web.fastpoll import FastPoll  # noqa: E402 - it needs the apps loaded

application = FastPoll(application)
