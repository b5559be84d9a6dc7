"""Per-user API tokens for the JSON API: only a keyed hash of each is kept."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _


class TokenScope(models.TextChoices):
    """What a token may do: read, or also submit, cancel and retry."""

    READ = "read", _("Read (list and view tasks)")
    SUBMIT = "submit", _("Submit (also submit, cancel and retry)")


class ApiToken(models.Model):
    """A bearer token of one user for the JSON API; its plaintext is shown once, at creation."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="batchtasks_api_tokens",
        verbose_name=_("user"),
    )
    name = models.CharField(_("name"), max_length=100)
    # The token's first characters after "bt_": not secret, they find its row and tell
    # tokens apart in lists.
    prefix = models.CharField(_("prefix"), max_length=16, db_index=True, editable=False)
    # HMAC-SHA256 of the whole token under a key derived from SECRET_KEY (hex).
    digest = models.CharField(_("digest"), max_length=64, unique=True, editable=False)
    scope = models.CharField(
        _("scope"), max_length=16, choices=TokenScope.choices, default=TokenScope.READ
    )
    created_at = models.DateTimeField(_("created"), db_default=Now(), editable=False)
    expires_at = models.DateTimeField(
        _("expires"), null=True, blank=True, help_text=_("Empty: never.")
    )
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True, editable=False)

    class Meta:
        verbose_name = _("API token")
        verbose_name_plural = _("API tokens")
        ordering = ["user", "-created_at"]

    def __str__(self) -> str:
        return f"{self.name} (bt_{self.prefix}…)"
