"""API tokens from the command line: ``token create`` (the plaintext printed once),
``token list`` and ``token revoke``."""

from __future__ import annotations

import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from rich.table import Table
from rich.text import Text

from batchtasks.core.exceptions import InvalidTokenOption
from batchtasks.models import ApiToken, TokenScope
from batchtasks.services import tokens

from .tasks import MAX_ID, find_user, parse_int
from .terminal import cells, console_for, local_time

#: How ``token list`` and ``token revoke`` name a token besides its id: ``bt_`` + prefix.
SHOWN_PREFIX = re.compile(r"bt_([0-9a-f]{12})")


def add(sub: Any) -> None:
    token = sub.add_parser(
        "token", help=gettext_lazy("Create, list and revoke API tokens of users.")
    )
    actions = token.add_subparsers(dest="token_action", metavar="ACTION")
    actions.required = True
    p = actions.add_parser(
        "create", help=gettext_lazy("Create a token; it is printed once, never again.")
    )
    p.add_argument(
        "--user", required=True, metavar="USERNAME", help=gettext_lazy("Whose token it is.")
    )
    p.add_argument(
        "--scope", default=TokenScope.READ.value, choices=TokenScope.values,
        help=gettext_lazy(
            "read: list and view tasks; submit: also submit, cancel, retry (default: read)."
        ),
    )  # fmt: skip
    p.add_argument(
        "--expires", default="90d", metavar="90d|12h|30m|never",
        help=gettext_lazy("Lifetime in days, hours or minutes, or never (default: 90d)."),
    )  # fmt: skip
    p.add_argument("--name", default="command line", help=gettext_lazy("What the token is for."))
    p.set_defaults(handler=create)
    p = actions.add_parser(
        "list", help=gettext_lazy("List tokens (never their secret), newest first.")
    )
    p.add_argument("--user", metavar="USERNAME", help=gettext_lazy("Only this user's tokens."))
    p.set_defaults(handler=list_tokens)
    p = actions.add_parser(
        "revoke", help=gettext_lazy("Revoke tokens, by id or by bt_ prefix as listed.")
    )
    p.add_argument("refs", nargs="+", metavar="ID|PREFIX")
    p.set_defaults(handler=revoke)


def create(
    command: BaseCommand, *, user: str, scope: str, expires: str, name: str, **options: Any
) -> None:
    owner = find_user(user)
    try:
        lifetime = tokens.parse_lifetime(expires)
    except InvalidTokenOption as exc:
        raise CommandError(f"--expires: {exc}") from None
    try:
        issued = tokens.issue(owner, name, scope, lifetime)
    except InvalidTokenOption as exc:
        raise CommandError(str(exc)) from None
    command.stdout.write(issued.plaintext)
    until = local_time(issued.token.expires_at) if issued.token.expires_at else _("never")
    command.stderr.write(
        _(
            "Token %(id)s of %(user)s (scope %(scope)s, expires %(until)s). It is shown this "
            "once: store it now."
        )
        % {
            "id": issued.token.pk,
            "user": owner.get_username(),
            "scope": issued.token.scope,
            "until": until,
        }
    )


def list_tokens(command: BaseCommand, *, user: str | None, **options: Any) -> None:
    rows = tokens.with_state(ApiToken.objects.select_related("user")).order_by("-created_at")
    if user is not None:
        rows = rows.filter(user=find_user(user))
    table = Table(
        _("ID"), _("User"), _("Name"), _("Token"), _("Scope"), _("Created"), _("Expires"),
        _("Last used"), _("State"),
    )  # fmt: skip
    for token in rows:
        table.add_row(
            *cells(
                token.pk, token.user.get_username(), token.name, f"bt_{token.prefix}…",
                token.scope, local_time(token.created_at),
                local_time(token.expires_at) if token.expires_at else _("never"),
                local_time(token.last_used_at) if token.last_used_at else "-",
                tokens.state(token),
            )
        )  # fmt: skip
    console_for(command).print(table if table.row_count else Text(_("No API tokens.")))


def revoke(command: BaseCommand, *, refs: list[str], **options: Any) -> None:
    wanted = Q(pk__in=[])
    for text in refs:
        shown = SHOWN_PREFIX.fullmatch(text.rstrip("…"))
        if shown:
            wanted |= Q(prefix=shown[1])
        else:
            wanted |= Q(pk=parse_int("ID", text, low=1, high=MAX_ID))
    matched = ApiToken.objects.filter(wanted)
    if matched.count() == 0:
        raise CommandError(_("No such token; `manage.py batchtasks token list` lists them."))
    count = tokens.revoke(matched)
    command.stdout.write(
        _("Tokens revoked: %(count)s; already revoked: %(before)s.")
        % {"count": count, "before": matched.count() - count}
    )
