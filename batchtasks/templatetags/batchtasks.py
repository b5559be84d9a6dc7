"""Template tags of batchtasks: ``{% load batchtasks %}{% batchtasks_indicator %}``."""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse
from django.utils.translation import get_language

from ..web import push

register = template.Library()


@register.inclusion_tag("batchtasks/indicator.html", takes_context=True)
def batchtasks_indicator(context: template.Context) -> dict[str, Any]:
    """The running-tasks indicator of the signed-in user; nothing for anonymous visitors."""
    request = context.get("request")
    user = getattr(request, "user", None) or context.get("user")
    if user is None or not user.is_authenticated:
        return {"signed_in": False}
    events = reverse("batchtasks:api-active-events") if push.enabled(request) else ""
    return {
        "signed_in": True,
        "poll_url": reverse("batchtasks:api-active"),
        "events_url": events,
        # Its words are in the request's language, whatever the page around it speaks.
        "language": get_language(),
    }
