"""mail.merge: one mail per recipient from a named template, sent in batches."""

from __future__ import annotations

import hashlib
import os
import re
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.mail import EmailMultiAlternatives
from django.core.validators import validate_email
from django.template import Context, TemplateDoesNotExist, TemplateSyntaxError, VariableDoesNotExist
from django.template.loader import get_template

from batchtasks import BatchTaskPlugin, Priority, batchtask
from batchtasks.core.exceptions import InvalidParameters, PermanentFailure

try:  # Django >= 6.1: the mailers of settings.MAILERS
    from django.core.mail import mailers
except ImportError:  # Django 5.2 to 6.0: the backend of settings.EMAIL_BACKEND
    mailers = None

TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
PARAMS = ("template", "recipients", "users", "context", "batch_size", "from_email")
#: The user sets ``{"users": …}`` may name: only users with an address, in id order.
USER_SETS: dict[str, dict[str, bool]] = {
    "active": {"is_active": True},
    "staff": {"is_active": True, "is_staff": True},
}
MAX_BATCH_SIZE = 500
#: At most this many failures are listed in the result (all are counted).
MAX_FAILED_LISTED = 100


@dataclass(frozen=True)
class Recipient:
    """One address and the template variables of its mail."""

    email: str
    context: dict[str, Any]


@dataclass(frozen=True)
class Merge:
    """Validated parameters of one mail merge."""

    template: str
    recipients: list[Recipient] | None
    users: str | None
    context: dict[str, Any]
    batch_size: int
    from_email: str

    def select(self) -> list[Recipient]:
        """The recipients in sending order."""
        if self.recipients is not None:
            return self.recipients
        users = get_user_model().objects.filter(**USER_SETS[str(self.users)]).exclude(email="")
        return [Recipient(u.email, {"user": u}) for u in users.order_by("pk")]


class BadParameter(PermanentFailure):
    """A parameter of a mail merge is wrong (``field`` names it): never retried."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def _fail(message: str, field: str | None = None) -> PermanentFailure:
    """A failure never retried; with ``field``, a bad parameter (refused at submit)."""
    text = f"mail.merge: {message}"
    return PermanentFailure(text) if field is None else BadParameter(text, field)


def _recipient(index: int, entry: Any) -> Recipient:
    if not isinstance(entry, dict) or not isinstance(entry.get("email"), str):
        raise _fail(
            f"recipients[{index}] must be an object with an 'email' string, not {entry!r}.",
            f"recipients[{index}]",
        )
    context = entry.get("context", {})
    if not isinstance(context, dict):
        raise _fail(
            f"recipients[{index}]['context'] must be an object, not {context!r}.",
            f"recipients[{index}].context",
        )
    return Recipient(entry["email"].strip(), context)


def _recipients(params: dict[str, Any]) -> list[Recipient] | None:
    if ("recipients" in params) == ("users" in params):
        raise _fail(
            "give exactly one of 'recipients' (a list) and 'users' (a user set name).",
            "recipients",
        )
    if "users" in params:
        if params["users"] not in USER_SETS:
            raise _fail(f"users={params['users']!r} must be one of {sorted(USER_SETS)}.", "users")
        return None
    entries = params["recipients"]
    if not isinstance(entries, list) or not entries:
        raise _fail(
            "recipients must be a non-empty list of {'email': …, 'context': {…}}.", "recipients"
        )
    return [_recipient(i, entry) for i, entry in enumerate(entries)]


def _from_email(value: Any) -> str:
    address = settings.DEFAULT_FROM_EMAIL if value is None else value
    if not isinstance(address, str) or "\n" in address or "\r" in address:
        raise _fail(f"from_email={value!r} must be one line of text.", "from_email")
    try:
        validate_email(parseaddr(address)[1])
    except ValidationError:
        raise _fail(f"from_email={address!r} is not an email address.", "from_email") from None
    return address


def parse_params(params: Any) -> Merge:
    """Check the parameters; anything wrong raises ``PermanentFailure`` (never retried)."""
    if not isinstance(params, dict):
        raise _fail(f"parameters must be an object, not {params!r}.", "")
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise _fail(
            f"unknown parameter(s) {unknown}; the parameters are {', '.join(PARAMS)}.",
            str(unknown[0]),
        )
    template = params.get("template")
    if not isinstance(template, str) or not TEMPLATE_NAME.match(template):
        raise _fail(
            f"template={template!r} must be the name of a mail template (lower-case letters, "
            "digits, - and _), as 'welcome' for mail/welcome.txt.",
            "template",
        )
    batch_size = params.get("batch_size", 50)
    if (
        not isinstance(batch_size, int)
        or isinstance(batch_size, bool)
        or not 1 <= batch_size <= MAX_BATCH_SIZE
    ):
        raise _fail(
            f"batch_size={batch_size!r} must be an integer from 1 to {MAX_BATCH_SIZE}.",
            "batch_size",
        )
    context = params.get("context", {})
    if not isinstance(context, dict):
        raise _fail(f"context must be an object, not {context!r}.", "context")
    recipients = _recipients(params)
    users = None if recipients is not None else params["users"]
    return Merge(
        template, recipients, users, context, batch_size, _from_email(params.get("from_email"))
    )


@dataclass(frozen=True)
class MailTemplates:
    """The subject, text body and optional HTML body of one mail template."""

    subject: Any
    text: Any
    html: Any | None

    @classmethod
    def load(cls, name: str) -> MailTemplates:
        """``mail/<name>.subject.txt``, ``mail/<name>.txt`` and ``mail/<name>.html`` if any."""
        try:
            subject = get_template(f"mail/{name}.subject.txt")
            text = get_template(f"mail/{name}.txt")
            try:
                html = get_template(f"mail/{name}.html")
            except TemplateDoesNotExist:
                html = None
        except TemplateDoesNotExist as exc:
            raise _fail(
                f"there is no mail template {name!r} ({exc} not found); it needs "
                f"mail/{name}.subject.txt and mail/{name}.txt in a template folder."
            ) from None
        except TemplateSyntaxError as exc:
            raise _fail(f"mail template {name!r} does not compile: {exc}") from None
        return cls(subject, text, html)

    def message(self, recipient: Recipient, merge: Merge) -> EmailMultiAlternatives:
        """The recipient's mail, rendered."""
        context = {**merge.context, **recipient.context, "email": recipient.email}
        # Plain text is not HTML: escaping would show "&amp;" to the reader, and there is
        # no browser to inject into, so the text parts render with autoescape off.
        # The HTML part keeps autoescape on: the context comes from whoever submitted.
        subject = self.subject.template.render(Context(context, autoescape=False))
        body = self.text.template.render(Context(context, autoescape=False))
        # A header may not span lines; a newline in a name would make the send fail.
        mail = EmailMultiAlternatives(
            " ".join(subject.split()), body, merge.from_email, [recipient.email]
        )
        if self.html is not None:
            mail.attach_alternative(self.html.render(context), "text/html")
        return mail


class Journal:
    """What one task has sent: a hash of each address, a line each, in
    ``MEDIA_ROOT/batchtasks/mail/<task id>.sent`` (no addresses in clear)."""

    def __init__(self, task_id: int | None) -> None:
        self.task_id = task_id
        self.done: set[str] = set()
        self.file: IO[str] | None = None
        if task_id is not None:
            folder = Path(settings.MEDIA_ROOT) / "batchtasks" / "mail"
            folder.mkdir(parents=True, exist_ok=True)
            self.file = (folder / f"{int(task_id)}.sent").open("a+", encoding="ascii")
            self.file.seek(0)
            self.done = set(self.file.read().split())

    def key(self, address: str) -> str:
        return hashlib.sha256(f"{self.task_id}:{address.lower()}".encode()).hexdigest()

    def __contains__(self, address: str) -> bool:
        return self.key(address) in self.done

    def add(self, address: str) -> None:
        """Note a sent address at once: a crash a moment later must not resend it."""
        self.done.add(self.key(address))
        if self.file is not None:
            self.file.write(self.key(address) + "\n")
            self.file.flush()

    def sync(self) -> None:
        """Make what was noted survive a machine crash (once a batch)."""
        if self.file is not None:
            os.fsync(self.file.fileno())

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


@dataclass
class Tally:
    """What happened to the recipients so far."""

    total: int
    sent: int = 0
    already_sent: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    @property
    def done(self) -> int:
        return self.sent + self.already_sent + len(self.failed)

    def result(self) -> dict[str, Any]:
        return {
            "recipients": self.total,
            "sent": self.sent,
            "already_sent": self.already_sent,
            "failed_count": len(self.failed),
            "failed": self.failed[:MAX_FAILED_LISTED],
        }


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else reply


@dataclass
class Mailing:
    """One run of a merge: what to send, what was sent."""

    merge: Merge
    templates: MailTemplates
    journal: Journal
    tally: Tally

    def send(self, connection: Any, recipient: Recipient) -> None:
        """Send the recipient's mail unless it went out before; note a failure."""
        error = self._send(connection, recipient)
        if error:
            self.tally.failed.append({"email": recipient.email, "error": error})

    def _send(self, connection: Any, recipient: Recipient) -> str | None:
        address = recipient.email.lower()
        if address in self.tally.seen:
            return "listed more than once: sent only once"
        self.tally.seen.add(address)
        try:
            validate_email(recipient.email)
        except ValidationError:
            return "not a valid email address"
        if recipient.email in self.journal:
            self.tally.already_sent += 1
            return None
        try:
            message = self.templates.message(recipient, self.merge)
        except VariableDoesNotExist as exc:
            # A template that cannot render is a bug no retry will fix.
            raise _fail(f"mail template {self.merge.template!r} does not render: {exc}") from None
        try:
            connection.send_messages([message])
        except smtplib.SMTPRecipientsRefused as exc:
            reasons = [f"{code} {_text(reply)}" for code, reply in exc.recipients.values()]
            return f"refused by the mail server: {'; '.join(reasons)}"
        self.journal.add(recipient.email)
        self.tally.sent += 1
        return None


def _connection() -> Any:
    """A new connection of the default mailer (not yet open: ``with`` opens and closes it)."""
    if mailers is not None:
        return mailers.default  # a new backend instance at each access
    from django.core.mail import get_connection  # deprecated since Django 6.1

    return get_connection()


def _batches(items: list[Recipient], size: int) -> Iterator[list[Recipient]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@batchtask(
    "mail.merge",
    queue="batch.mail",
    # One merge at a time: mail servers throttle (or blacklist) a sender that floods them.
    max_concurrency=1,
    max_attempts=3,
    retry_backoff=30,
    timeout=3600,
    priority=Priority.NORMAL,
    description="Mail merge: a templated mail to each recipient",
)
class MailMerge(BatchTaskPlugin):
    """Render a mail template for each recipient and send the mails in batches.

    Parameters: ``template`` (the name of ``mail/<name>.txt`` with its
    ``.subject.txt`` and optional ``.html``), either ``recipients`` (a list of
    ``{"email": …, "context": {…}}``) or ``users`` (``"active"`` or ``"staff"``: their
    template variable is ``user``), optional ``context`` shared by all, ``batch_size``
    (default 50) and ``from_email`` (default ``DEFAULT_FROM_EMAIL``). A bad address,
    one listed twice or one the mail server refuses is reported in the result's
    ``failed``, not fatal; bad parameters fail the task at once (no retry).

    On a rerun of the same task (a retry after a lost connection, a redelivery after
    a worker died) the addresses it already sent to are skipped and counted as
    ``already_sent``: a recipient gets the mail twice only if the worker died between
    the mail server taking the mail and the next line of the journal being written.
    """

    @classmethod
    def validate_params(cls, params: Any) -> None:
        """Refuse bad parameters at submit, before anything is written."""
        try:
            parse_params(params)
        except BadParameter as exc:
            raise InvalidParameters(str(exc), fields={exc.field: str(exc)}) from None

    def run(self, params: Any) -> dict[str, Any]:
        merge = parse_params(params)
        templates = MailTemplates.load(merge.template)
        recipients = merge.select()
        mailing = Mailing(merge, templates, Journal(self.task_id), Tally(len(recipients)))
        try:
            for batch in _batches(recipients, merge.batch_size):
                self.check_cancelled()
                self._send_batch(mailing, batch)
                mailing.journal.sync()
        finally:
            mailing.journal.close()
        tally = mailing.tally
        self.progress(100, f"{tally.sent} sent, {len(tally.failed)} failed")
        return tally.result()

    def _send_batch(self, mailing: Mailing, batch: list[Recipient]) -> None:
        # One connection for the whole batch, one message at a time within it: a refused
        # recipient is then known by name, and each sent one is journalled at once.
        tally = mailing.tally
        with _connection() as connection:
            for recipient in batch:
                mailing.send(connection, recipient)
                self.progress(
                    100 * tally.done / tally.total, f"{tally.done} of {tally.total} recipients"
                )
