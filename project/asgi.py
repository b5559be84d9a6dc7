"""ASGI entry point of the reference project: for the indicator's push stream
(BATCHTASKS["INDICATOR_PUSH"]), e.g. ``uvicorn project.asgi:application``."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

application = get_asgi_application()
