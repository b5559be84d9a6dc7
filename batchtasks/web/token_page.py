"""The signed-in user's own API tokens: a list, a form that makes one (its plaintext shown
in that one answer, stored nowhere), and revoke buttons. A session page: CSRF-checked,
and an API token never signs anyone in here."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from ..core.exceptions import InvalidTokenOption
from ..models import ApiToken, TokenScope
from ..services import tokens


class TokenForm(forms.Form):
    """What a new token is called, what it may do and how long it lives."""

    name = forms.CharField(label=_("Name"), max_length=100)
    scope = forms.ChoiceField(label=_("Scope"), choices=TokenScope.choices)
    expires = forms.CharField(
        label=_("Expires after"),
        initial="90d",
        max_length=20,
        help_text=_("Days, hours or minutes (90d, 12h, 30m), or never."),
    )

    def clean_expires(self) -> Any:
        try:
            return tokens.parse_lifetime(self.cleaned_data["expires"])
        except InvalidTokenOption as exc:
            raise forms.ValidationError(str(exc)) from None


def _page(request: HttpRequest, form: TokenForm, issued: tokens.Issued | None) -> HttpResponse:
    user: Any = request.user
    rows = tokens.with_state(ApiToken.objects.filter(user=user)).order_by("-created_at")
    listed = [(token, tokens.state(token)) for token in rows]
    context = {"form": form, "issued": issued, "tokens": listed}
    return TemplateResponse(request, "batchtasks/tokens.html", context)


@never_cache  # no-store: one answer shows a new token
@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def page(request: HttpRequest) -> HttpResponse:
    """List the caller's tokens; POST makes one (``create``) or revokes one (``revoke``)."""
    if request.method != "POST":
        return _page(request, TokenForm(), None)
    if "revoke" in request.POST:
        pk, user = request.POST["revoke"], request.user
        if pk.isdigit() and len(pk) < 19 and user.pk is not None:
            tokens.revoke(ApiToken.objects.filter(user_id=user.pk, pk=int(pk)))
        return redirect("batchtasks:tokens")
    form = TokenForm(request.POST)
    if not form.is_valid():
        return _page(request, form, None)
    data = form.cleaned_data
    issued = tokens.issue(request.user, data["name"], data["scope"], data["expires"])
    return _page(request, TokenForm(), issued)
