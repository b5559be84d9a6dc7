"""The running-tasks indicator's poll, cheap when nothing changed.

The answer is the caller's own tasks that are unfinished or finished in the last
``INDICATOR_RECENT_SECONDS`` (its "active set"). Its ETag is decided without building it:

* **The ETag** hashes the ``(id, updated_at)`` pairs of the active set (PostgreSQL: one
  indexed query that returns an MD5 of them, on ``batchtask_owner_active_idx``) with the
  few facts of the caller the body also shows (username, staff or not, language, the
  window). Every write to a task sets ``updated_at`` from the database's clock (the list
  API's ``since`` relies on it too), so the ETag changes exactly when the body would: a
  task that changes, appears, leaves the window or is deleted changes the pairs; another
  user's task is not among them. A 200 computes the same ETag from the rows it sends.
* **The poll token** is a signed, HttpOnly cookie (``batchtasks_poll``, path: the poll's
  URL, SameSite=Strict, ``INDICATOR_TOKEN_SECONDS``) that a poll answered through the
  session sets. It names the user and binds the session key and the user's session auth
  hash (an HMAC of both, so neither is in the cookie). With it, a poll that sends
  ``If-None-Match`` is answered by one query: the session row still there (a logout
  deletes it), the user still active with the same password hash (a password change
  changes it) and the ETag. Anything else (no token, a forged, expired or stale one, a
  changed answer) goes the ordinary way through the session, so the token grants nothing
  the session does not: it only ever decides a 304 of this read. It needs sessions in
  the database (``db`` or ``cached_db`` engines) and PostgreSQL; otherwise none is set.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.signals import setting_changed
from django.db import connections, router
from django.db.models import Q, QuerySet
from django.db.models.functions import Now
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, HttpResponseNotModified
from django.urls import reverse
from django.utils.crypto import constant_time_compare, salted_hmac
from django.utils.http import parse_etags
from django.utils.translation import get_language

from ..core.conf import get_settings
from ..db.prepared import Kept
from ..db.sql import Clock
from ..models import BatchTask
from .serialize import Viewer, dumps, task_json

#: The version of the answer's format: part of every ETag.
FORMAT = 1
TOKEN_COOKIE = "batchtasks_poll"
TOKEN_SALT = "batchtasks.web.indicator.poll-token"
#: Set in ``request.META`` when the token's query found the answer changed.
CHANGED = "batchtasks.indicator.changed"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Watcher:
    """The facts of the caller that the answer shows besides the tasks."""

    user_id: int
    username: str
    staff: bool

    @classmethod
    def of(cls, user: Any) -> Watcher:
        return cls(user.pk, user.get_username(), bool(user.is_staff))


def active_rows(tasks: QuerySet[BatchTask], recent: int) -> QuerySet[BatchTask]:
    """``tasks`` cut to the active set, in id order; the cutoff from the database's clock."""
    cutoff = Now() - timedelta(seconds=recent)
    return tasks.filter(Q(finished_at__isnull=True) | Q(finished_at__gte=cutoff)).order_by("pk")


def rows_digest(pairs: Iterable[tuple[int, datetime]]) -> str:
    """The MD5 of ``id:updated_at`` (microseconds since 1970) of each row, in id order."""
    text = ",".join(f"{pk}:{(at - EPOCH) // MICROSECOND}" for pk, at in pairs)
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _digest_sql(connection: Any, owner: str) -> str:
    """SQL of ``rows_digest`` of the active set of the owner in ``owner`` (PostgreSQL;
    one ``%s``: the window's seconds)."""
    table = connection.ops.quote_name(BatchTask._meta.db_table)
    pairs = "t.id::text || ':' || (EXTRACT(EPOCH FROM t.updated_at) * 1000000)::bigint::text"
    return (
        f"SELECT MD5(COALESCE(STRING_AGG({pairs}, ',' ORDER BY t.id), '')) FROM {table} t "
        f"WHERE t.owner_id = {owner} AND (t.finished_at IS NULL "
        f"OR t.finished_at >= {Clock(connection).now} - MAKE_INTERVAL(secs => %s))"
    )


def digest(user_id: int, recent: int) -> str:
    """``rows_digest`` of the user's active set, read in one query."""
    using = router.db_for_read(BatchTask)
    connection = connections[using]
    if connection.vendor != "postgresql":
        rows = active_rows(BatchTask.objects.using(using).filter(owner_id=user_id), recent)
        return rows_digest(rows.values_list("pk", "updated_at"))
    with connection.cursor() as cursor:
        cursor.execute(_digest_sql(connection, "%s"), [user_id, recent])
        return str(cursor.fetchone()[0])


def etag(watcher: Watcher, rows: str, recent: int) -> str:
    """The answer's weak ETag from the caller's facts and the digest of the active set."""
    facts = [FORMAT, watcher.username, watcher.staff, get_language(), recent, rows]
    return f'W/"{hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:32]}"'


def matches(if_none_match: str, tag: str) -> bool:
    """Whether an ``If-None-Match`` value names ``tag`` (weak comparison) or ``*``."""
    wanted = {t.removeprefix("W/") for t in parse_etags(if_none_match)}
    return tag.removeprefix("W/") in wanted or "*" in wanted


def not_modified(tag: str) -> HttpResponse:
    response = HttpResponseNotModified()
    response["ETag"] = tag
    return response


def full_answer(user: Any) -> tuple[bytes, str]:
    """The answer's body and its ETag, computed from the very rows sent (so that it never
    names a newer state than the body's): one query on batchtask_owner_active_idx."""
    viewer, recent = Viewer(user), get_settings().INDICATOR_RECENT_SECONDS
    rows = list(active_rows(viewer.own_tasks(), recent))
    body = dumps({"tasks": [task_json(t, viewer) for t in rows], "recent_seconds": recent})
    return body, etag(Watcher.of(user), rows_digest((t.pk, t.updated_at) for t in rows), recent)


# --- the poll token -------------------------------------------------------------------------
def _session_model() -> Any:
    """The session model if sessions are kept in the database, else ``None``."""
    store = import_module(settings.SESSION_ENGINE).SessionStore
    return store.get_model_class() if hasattr(store, "get_model_class") else None


@cache
def _look_sql() -> tuple[str, Kept] | None:
    """The database and statement of ``look``, or ``None`` where it cannot run: it needs
    PostgreSQL, and sessions and users in the tasks' database (kept until settings change:
    this is on the path of every poll)."""
    model = _session_model()
    if model is None:
        return None
    using = router.db_for_read(BatchTask)
    same_db = {router.db_for_read(model), router.db_for_read(get_user_model())} == {using}
    if not same_db or connections[using].vendor != "postgresql":
        return None
    return using, Kept("poll_token", _token_sql(using, model._meta.db_table))


@receiver(setting_changed)
def _forget(**kwargs: Any) -> None:
    _look_sql.cache_clear()
    _expected_binding.cache_clear()
    _signed.cache_clear()


def can_look() -> bool:
    """Whether ``look`` works here."""
    return _look_sql() is not None


def _token_seconds() -> int:
    """The token's lifetime, or 0 when this deployment cannot use tokens."""
    seconds = get_settings().INDICATOR_TOKEN_SECONDS
    return seconds if seconds and can_look() else 0


def _binding(session_key: str, auth_hash: str) -> str:
    return salted_hmac(TOKEN_SALT, f"{session_key}:{auth_hash}", algorithm="sha256").hexdigest()


def _by_session(meta: Mapping[str, Any], cookies: Mapping[str, str]) -> str | None:
    """The session key of a caller signed in by session, not by an Authorization header."""
    if "HTTP_AUTHORIZATION" in meta:
        return None
    return cookies.get(settings.SESSION_COOKIE_NAME) or None


def issue_token(request: HttpRequest, response: HttpResponse) -> None:
    """Set the poll token of the session's caller on ``response`` (when tokens are on)."""
    seconds = _token_seconds()
    session_key = _by_session(request.META, request.COOKIES) and request.session.session_key
    if not seconds or not session_key:
        return
    user = request.user
    value = f"{user.pk}:{binding_of(session_key, user)}"
    response.set_cookie(
        TOKEN_COOKIE,
        signing.TimestampSigner(salt=TOKEN_SALT).sign(value),
        max_age=seconds,
        path=reverse("batchtasks:api-active"),
        secure=settings.SESSION_COOKIE_SECURE,
        httponly=True,
        samesite="Strict",
    )


def _token_sql(using: str, session_table: str) -> str:
    """The one query of a poll with a token: the user, their session, the digest
    (parameters: the session key, the window's seconds, the user id)."""
    connection = connections[using]
    quote = connection.ops.quote_name
    meta = get_user_model()._meta
    fields = {f.name: quote(f.column) for f in meta.concrete_fields}
    username = fields[get_user_model().USERNAME_FIELD]
    session = quote(session_table)
    return (
        f"SELECT u.{fields['password']}, "
        f"{'u.' + fields['is_active'] if 'is_active' in fields else 'TRUE'}, "
        f"{'u.' + fields['is_staff'] if 'is_staff' in fields else 'FALSE'}, "
        f"u.{username}::text, EXISTS (SELECT 1 FROM {session} s WHERE s.session_key = %s "
        f"AND s.expire_date > {Clock(connection).now}), "
        f"({_digest_sql(connection, 'u.' + quote(meta.pk.column))}) "
        f"FROM {quote(meta.db_table)} u WHERE u.{quote(meta.pk.column)} = %s"
    )


def _token_user(raw: str, seconds: int) -> str | None:
    """The value of a token (the user id and the binding), if its signature is ours and it
    is young enough."""
    signed = _signed(raw)
    if signed is None or time.time() - signed[1] > seconds:  # forged, or expired
        return None
    return signed[0]


@lru_cache(maxsize=4096)
def _signed(raw: str) -> tuple[str, int] | None:
    """The value of a token whose signature is ours and the time it was signed; ``None``
    for any other. A tab sends one token for its lifetime, so its signature is checked
    once (a key derivation and two HMACs a poll otherwise; forgotten when the settings
    change, as the secret key may have)."""
    signer = signing.TimestampSigner(salt=TOKEN_SALT)
    try:
        value = signer.unsign(raw)
    except signing.BadSignature:
        return None
    return value, signing.b62_decode(raw.rsplit(signer.sep, 2)[1])


@dataclass(frozen=True)
class Look:
    """What the one query of a check saw: the caller (``None``: signed out since, or no
    longer active) and the digest of their active set."""

    watcher: Watcher | None
    digest: str


def look(session_key: str, user_id: int, binding: str, recent: int) -> Look:
    """Check that the session still holds the user with the password hash that ``binding``
    binds, and read the digest, in one query (PostgreSQL, sessions in the database)."""
    where = _look_sql()
    assert where is not None, "look() where can_look() is false"
    using, statement = where
    row = statement.fetchone(using, [session_key, recent, user_id])
    if row is None or not (row[1] and row[4]):  # no such user, inactive, or signed out
        return Look(None, "")
    if not constant_time_compare(binding, _expected_binding(session_key, user_id, row[0])):
        return Look(None, row[5])  # another session's token, or the password changed since
    return Look(Watcher(user_id, row[3], bool(row[2])), row[5])


@lru_cache(maxsize=4096)
def _expected_binding(session_key: str, user_id: int, password: str) -> str:
    """The binding of a token of this session and user while the user's password hash is
    ``password``: the same for every poll of a tab until one changes, so it is worked out
    once (a user object and two HMACs cost a fifth of the query's CPU; forgotten when the
    settings change, as the secret key may have)."""
    auth_hash = get_user_model()(pk=user_id, password=password).get_session_auth_hash()
    return _binding(session_key, auth_hash)


def binding_of(session_key: str, user: Any) -> str:
    """What ties a token (or a push stream) to this session and the user's password."""
    return _binding(session_key, user.get_session_auth_hash())


def token_etag(meta: Mapping[str, Any], cookies: Mapping[str, str]) -> tuple[str, bool] | None:
    """The answer's ETag decided by the poll token in one query, and whether the request's
    ``If-None-Match`` names it; ``None``: ask the session (no, a bad or an expired token,
    no session cookie, an Authorization header, no ``If-None-Match``, signed out since).

    ``meta`` and ``cookies`` are a request's ``META`` and ``COOKIES``, or a WSGI environ
    and its parsed cookies (batchtasks.web.fastpoll).
    """
    raw, session_key = cookies.get(TOKEN_COOKIE), _by_session(meta, cookies)
    if not raw or not session_key or "HTTP_IF_NONE_MATCH" not in meta:
        return None
    seconds = _token_seconds()
    value = _token_user(raw, seconds) if seconds else None
    user_id, _, binding = (value or "").partition(":")
    if not user_id.isdigit():
        return None
    recent = get_settings().INDICATOR_RECENT_SECONDS
    seen = look(session_key, int(user_id), binding, recent)
    if seen.watcher is None:
        return None
    tag = etag(seen.watcher, seen.digest, recent)
    return tag, matches(meta["HTTP_IF_NONE_MATCH"], tag)


def answer_by_token(request: HttpRequest) -> HttpResponse | None:
    """A 304 decided by the poll token in one query, or ``None``: ask the session."""
    if CHANGED in request.META:  # the fast path's query saw it changed (fastpoll)
        return None
    decided = token_etag(request.META, request.COOKIES)
    if decided is None:
        return None
    tag, unchanged = decided
    if unchanged:
        return not_modified(tag)
    request.META[CHANGED] = True  # the view need not ask again
    return None
