"""Values of the environment for the settings: a value that cannot be read stops the start
with ``ImproperlyConfigured`` naming the variable, its value and what it must be."""

from __future__ import annotations

import os
import re

from django.core.exceptions import ImproperlyConfigured

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}
#: ``scheme://host[:port]``, as CSRF_TRUSTED_ORIGINS wants them (``*.`` allowed in host).
ORIGIN = re.compile(r"https?://[^\s/?#]+")
#: ``Header-Name: value``, the way the proxy's request header reads.
HEADER = re.compile(r"([A-Za-z0-9-]+)\s*:\s*(\S+)")


def _text(name: str) -> str:
    """The variable's value without surrounding blanks ('' when unset)."""
    return os.environ.get(name, "").strip()


def env_flag(name: str, default: bool = False) -> bool:
    """A boolean: 1/true/yes/on or 0/false/no/off (any case); unset or empty: ``default``."""
    value = _text(name).lower()
    if not value:
        return default
    if value in TRUE | FALSE:
        return value in TRUE
    raise ImproperlyConfigured(
        f"{name}={os.environ[name]!r} must be one of 1, true, yes, on or 0, false, no, off "
        "(or unset)."
    )


def env_seconds(name: str, default: int = 0) -> int:
    """A whole number of seconds >= 0; unset or empty: ``default``."""
    value = _text(name)
    if not value:
        return default
    if not re.fullmatch(r"[0-9]+", value):
        raise ImproperlyConfigured(
            f"{name}={os.environ[name]!r} must be a whole number of seconds >= 0, "
            "e.g. 31536000 for a year."
        )
    return int(value)


def env_list(name: str, default: str = "") -> list[str]:
    """Comma-separated values, blanks around them dropped; unset: ``default`` split alike."""
    value = os.environ.get(name, default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_origins(name: str) -> list[str]:
    """Comma-separated origins, each ``https://host[:port]`` (or ``http://``)."""
    origins = env_list(name)
    for origin in origins:
        if not ORIGIN.fullmatch(origin):
            raise ImproperlyConfigured(
                f"{name}={os.environ[name]!r}: {origin!r} is not an origin; write each "
                "with its scheme and no path, e.g. https://batch.example.com (comma-separated)."
            )
    return origins


def env_proxy_header(name: str) -> tuple[str, str] | None:
    """``"X-Forwarded-Proto: https"`` as Django's ``SECURE_PROXY_SSL_HEADER``
    (``("HTTP_X_FORWARDED_PROTO", "https")``); unset or empty: ``None``."""
    value = _text(name)
    if not value:
        return None
    match = HEADER.fullmatch(value)
    if match is None:
        raise ImproperlyConfigured(
            f"{name}={os.environ[name]!r} must be the header the TLS proxy sets and the "
            "value that means HTTPS, e.g. 'X-Forwarded-Proto: https'."
        )
    header, https = match.groups()
    return "HTTP_" + header.upper().replace("-", "_"), https
