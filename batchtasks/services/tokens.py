"""API tokens: issue one (its plaintext returned once), find the live token a request
sends, note its use, revoke.

A token is ``bt_`` + 12 hex characters (the prefix, kept in the clear to find the row) +
``_`` + 43 random URL-safe characters. Only an HMAC-SHA256 of the whole token is stored,
keyed by ``SECRET_KEY`` (or one of ``SECRET_KEY_FALLBACKS``, so rotating the key keeps
tokens working while the old key is a fallback). A fast keyed hash is enough: the token
has 256 random bits, so there is nothing to guess offline, and a stolen table without the
key cannot even be checked against.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import router
from django.db.models import BooleanField, ExpressionWrapper, Q, QuerySet
from django.db.models.functions import Now
from django.utils.crypto import constant_time_compare, salted_hmac
from django.utils.translation import gettext as _

from ..core.exceptions import InvalidTokenOption
from ..models import ApiToken, TokenScope

PREFIX = "bt_"
TOKEN = re.compile(r"bt_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
HASH_SALT = "batchtasks.services.tokens.digest"
#: A token's last use is written at most this often (a write per request would cost more
#: than the request).
TOUCH_SECONDS = 60
#: The longest lifetime ``--expires`` and the forms accept: ten years.
LIFETIME_MAX = timedelta(days=3650)
_LIFETIME = re.compile(r"([0-9]{1,7})([dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


@dataclass(frozen=True)
class Issued:
    """A token just made: its row, and its plaintext (shown once, never stored)."""

    token: ApiToken
    plaintext: str


def parse_lifetime(text: str) -> timedelta | None:
    """``90d``, ``12h``, ``30m`` as a duration, ``never`` as None; else InvalidTokenOption."""
    value = text.strip().lower()
    if value == "never":
        return None
    match = _LIFETIME.fullmatch(value)
    lifetime = timedelta(**{_UNITS[match[2]]: int(match[1])}) if match else None
    if lifetime is None or not timedelta(0) < lifetime <= LIFETIME_MAX:
        raise InvalidTokenOption(
            _(
                "The lifetime must be a number of days, hours or minutes (90d, 12h, 30m) up "
                "to %(max)sd, or never; not %(text)s."
            )
            % {"max": LIFETIME_MAX.days, "text": repr(text)}
        )
    return lifetime


def parse_scope(text: str) -> TokenScope:
    """The scope named ``text``, or InvalidTokenOption naming the scopes."""
    if text not in TokenScope.values:
        raise InvalidTokenOption(
            _("The scope must be %(scopes)s, not %(text)s.")
            % {"scopes": " / ".join(TokenScope.values), "text": repr(text)}
        )
    return TokenScope(text)


def _digests(plaintext: str) -> list[str]:
    """The token's digest under the current key first, then under each fallback key."""
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return [
        salted_hmac(HASH_SALT, plaintext, secret=key, algorithm="sha256").hexdigest()
        for key in keys
    ]


def issue(user: Any, name: str, scope: str, lifetime: timedelta | None) -> Issued:
    """Make a token for ``user``; it expires ``lifetime`` from now by the database's clock."""
    if not name.strip() or len(name) > 100 or "\x00" in name:
        raise InvalidTokenOption(
            _("A token needs a name of 1 to 100 characters, not %(name)s.") % {"name": repr(name)}
        )
    prefix = secrets.token_hex(6)
    plaintext = f"{PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    token = ApiToken(
        user=user,
        name=name.strip(),
        scope=parse_scope(scope),
        prefix=prefix,
        digest=_digests(plaintext)[0],
    )
    if lifetime is not None:
        token.expires_at = Now() + lifetime
    token.save(using=router.db_for_write(ApiToken))
    token.refresh_from_db(fields=["created_at", "expires_at"])
    return Issued(token, plaintext)


def live(tokens: QuerySet[ApiToken]) -> QuerySet[ApiToken]:
    """``tokens`` cut to those neither revoked nor expired, by the database's clock."""
    return tokens.filter(revoked_at__isnull=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=Now())
    )


def _touch_due() -> Q:
    return Q(last_used_at__isnull=True) | Q(
        last_used_at__lt=Now() - timedelta(seconds=TOUCH_SECONDS)
    )


def authenticate(plaintext: str) -> ApiToken | None:
    """The live token of an active user that ``plaintext`` is, its use noted; else None."""
    match = TOKEN.fullmatch(plaintext)
    if match is None:
        return None
    candidates = (
        live(ApiToken.objects.filter(prefix=match[1]))
        .select_related("user")
        .annotate(touch_due=ExpressionWrapper(_touch_due(), output_field=BooleanField()))
    )
    digests = _digests(plaintext)
    for token in candidates:
        # Every digest is compared, in constant time: how long it takes tells nothing.
        matched = [constant_time_compare(token.digest, d) for d in digests]
        if any(matched):
            if not token.user.is_active:
                return None
            if token.touch_due:
                _touch(token)
            return token
    return None


def _touch(token: ApiToken) -> None:
    """Note the token's use now (by the database's clock) unless another request just did."""
    ApiToken.objects.filter(_touch_due(), pk=token.pk).update(last_used_at=Now())


def revoke(tokens: QuerySet[ApiToken]) -> int:
    """Revoke those of ``tokens`` still unrevoked, now by the database's clock; how many."""
    return tokens.filter(revoked_at__isnull=True).update(revoked_at=Now())


def with_state(tokens: QuerySet[ApiToken]) -> QuerySet[ApiToken]:
    """``tokens`` with ``expired`` decided by the database's clock (for ``state``)."""
    expired = ExpressionWrapper(Q(expires_at__lte=Now()), output_field=BooleanField())
    return tokens.annotate(expired=expired)


def state(token: ApiToken) -> str:
    """``active``, ``expired`` or ``revoked``: of a token read through ``with_state``."""
    if token.revoked_at is not None:
        return "revoked"
    return "expired" if getattr(token, "expired", False) else "active"
