"""mail.merge: the mails it sends, in this process (locmem outbox) and by a real worker."""

from __future__ import annotations

import email
import email.policy
import smtplib
from pathlib import Path
from typing import Any, ClassVar

import django
import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend

from batchtasks import BatchTask, TaskState
from batchtasks.core.exceptions import PermanentFailure, TaskCancelled
from batchtasks.core.plugin import LocalContext
from batchtasks.worker import runner
from plugins.mail import MailMerge
from tests.conftest import purge_queues
from tests.workers import wait_for


@pytest.fixture(autouse=True)
def media(settings, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def send_through(settings: Any, backend: str) -> None:
    """Send this test's mail through ``backend``: the default mailer of MAILERS on Django
    6.1 (where EMAIL_BACKEND is deprecated), EMAIL_BACKEND before."""
    if django.VERSION >= (6, 1):
        settings.MAILERS = {"default": {"BACKEND": backend}}
    else:
        settings.EMAIL_BACKEND = backend


def people(count: int) -> list[dict[str, Any]]:
    return [
        {"email": f"person{i}@example.com", "context": {"name": f"Person {i}"}}
        for i in range(count)
    ]


class CancelAfterProgress(LocalContext):
    """A context whose cancel is requested once the plugin reported ``after`` steps."""

    def __init__(self, after: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.after = after

    def report_progress(self, percent: int, message: str) -> None:
        super().report_progress(percent, message)
        self.cancelled = len(self.progress) >= self.after


class RefusingBackend(LocmemBackend):
    """The locmem backend, except that the mail server refuses refused.example."""

    def send_messages(self, messages: Any) -> int:
        for message in messages:
            refused = {to: (550, b"5.1.1 no such user") for to in message.to if "refused" in to}
            if refused:
                raise smtplib.SMTPRecipientsRefused(refused)
        return super().send_messages(messages)


class RecordingBackend(LocmemBackend):
    """The locmem backend, noting how many mails went through each connection."""

    per_connection: ClassVar[list[int]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.count = 0

    def send_messages(self, messages: Any) -> int:
        sent = super().send_messages(messages)
        self.count += sent
        return sent

    def close(self) -> None:
        RecordingBackend.per_connection.append(self.count)


def test_each_batch_goes_through_one_connection(settings) -> None:
    send_through(settings, "tests.test_mail_merge.RecordingBackend")
    RecordingBackend.per_connection = []

    MailMerge(LocalContext()).run({"template": "welcome", "recipients": people(5), "batch_size": 2})

    assert RecordingBackend.per_connection == [2, 2, 1]
    assert len(mail.outbox) == 5


def test_each_recipient_gets_their_own_rendered_mail() -> None:
    recipients = [
        {"email": "ann@example.com", "context": {"name": "Ann", "plan": "Gold"}},
        {"email": "tom@example.com", "context": {"name": "Tom & Jerry <3"}},
    ]
    context = LocalContext(task_id=1)

    result = MailMerge(context).run(
        {"template": "welcome", "recipients": recipients, "context": {"site_name": "Acme"}}
    )

    assert result == {
        "recipients": 2, "sent": 2, "already_sent": 0, "failed_count": 0, "failed": [],
    }  # fmt: skip
    ann, tom = mail.outbox
    assert (ann.to, ann.subject) == (["ann@example.com"], "Welcome to Acme, Ann")
    assert "Your plan: Gold." in ann.body and "This mail went to ann@example.com." in ann.body
    assert ann.from_email == "webmaster@localhost"
    # Text mail is not escaped; the HTML alternative is.
    assert tom.subject == "Welcome to Acme, Tom & Jerry <3"
    assert tom.body.startswith("Hello Tom & Jerry <3,")
    html, mimetype = tom.alternatives[0]
    assert mimetype == "text/html" and "Hello Tom &amp; Jerry &lt;3," in html
    assert [p for p, _ in context.progress] == [50, 100, 100]


def test_bad_addresses_are_reported_and_the_others_sent() -> None:
    recipients = [
        {"email": "good@example.com"},
        {"email": "not an address"},
        {"email": "Good@Example.com"},
        {"email": "evil@example.com\nBcc: victim@example.com"},
    ]

    result = MailMerge(LocalContext(task_id=2)).run(
        {"template": "welcome", "recipients": recipients}
    )

    assert [m.to for m in mail.outbox] == [["good@example.com"]]
    assert result["sent"] == 1 and result["failed_count"] == 3
    assert result["failed"] == [
        {"email": "not an address", "error": "not a valid email address"},
        {"email": "Good@Example.com", "error": "listed more than once: sent only once"},
        {
            "email": "evil@example.com\nBcc: victim@example.com",
            "error": "not a valid email address",
        },
    ]


def test_an_address_the_mail_server_refuses_is_reported(settings) -> None:
    send_through(settings, "tests.test_mail_merge.RefusingBackend")
    recipients = [{"email": "a@example.com"}, {"email": "b@refused.example"}]

    result = MailMerge(LocalContext(task_id=3)).run(
        {"template": "welcome", "recipients": recipients}
    )

    assert [m.to for m in mail.outbox] == [["a@example.com"]]
    assert result["failed"] == [
        {
            "email": "b@refused.example",
            "error": "refused by the mail server: 550 5.1.1 no such user",
        }
    ]


def test_a_cancel_stops_between_batches_and_a_rerun_sends_only_the_rest() -> None:
    params = {"template": "welcome", "recipients": people(5), "batch_size": 2}

    with pytest.raises(TaskCancelled):
        MailMerge(CancelAfterProgress(after=1, task_id=4)).run(params)
    first = [m.to[0] for m in mail.outbox]
    result = MailMerge(LocalContext(task_id=4)).run(params)

    assert first == ["person0@example.com", "person1@example.com"], "the batch is finished"
    assert [m.to[0] for m in mail.outbox] == [f"person{i}@example.com" for i in range(5)]
    assert (result["sent"], result["already_sent"]) == (3, 2)


def test_the_journal_keeps_no_address_in_clear(media: Path) -> None:
    MailMerge(LocalContext(task_id=6)).run({"template": "welcome", "recipients": people(2)})

    journal = (media / "batchtasks" / "mail" / "6.sent").read_text()
    assert len(journal.split()) == 2
    assert "example" not in journal and "person" not in journal


@pytest.mark.django_db
def test_users_selects_active_users_with_an_address() -> None:
    users = get_user_model().objects
    users.create(username="ann", first_name="Ann", last_name="Lee", email="ann@example.com")
    users.create(username="bob", email="bob@example.com", is_active=False)
    users.create(username="cy", email="")
    users.create(username="dee", email="dee@example.com", is_staff=True)

    everyone = MailMerge(LocalContext()).run({"template": "welcome", "users": "active"})
    staff = MailMerge(LocalContext()).run({"template": "welcome", "users": "staff"})

    assert [m.to[0] for m in mail.outbox] == [
        "ann@example.com", "dee@example.com", "dee@example.com",
    ]  # fmt: skip
    assert mail.outbox[0].subject == "Welcome to batchtasks, Ann Lee"
    assert (everyone["sent"], staff["sent"]) == (2, 1)


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"template": "../../settings", "recipients": people(1)}, "must be the name of"),
        ({"template": "nosuch", "recipients": people(1)}, "there is no mail template 'nosuch'"),
        ({"template": "welcome"}, "exactly one of 'recipients'"),
        ({"template": "welcome", "recipients": people(1), "users": "active"}, "exactly one"),
        ({"template": "welcome", "users": "everybody"}, "users='everybody' must be one of"),
        ({"template": "welcome", "recipients": []}, "non-empty list"),
        ({"template": "welcome", "recipients": ["a@example.com"]}, "recipients[0] must be"),
        ({"template": "welcome", "recipients": people(1), "batch_size": 0}, "batch_size=0"),
        ({"template": "welcome", "recipients": people(1), "from_email": "x"}, "from_email='x'"),
        ({"template": "welcome", "recipients": people(1), "bcc": "me"}, "unknown parameter"),
    ],
)
def test_bad_parameters_fail_with_a_message_that_says_what_is_wrong(
    params: dict[str, Any], says: str
) -> None:
    with pytest.raises(PermanentFailure) as failure:
        MailMerge(LocalContext()).run(params)

    assert says in str(failure.value)
    assert mail.outbox == []


@pytest.mark.django_db(transaction=True)
def test_the_runner_records_the_merge_result_and_fails_bad_input_without_retrying() -> None:
    good = BatchTask.submit("mail.merge", {"template": "welcome", "recipients": people(3)})
    bad = BatchTask.submit("mail.merge", {"template": "nosuch", "recipients": people(3)})
    try:
        runner.execute(good.pk, 1, worker="inline@test")
        runner.execute(bad.pk, 1, worker="inline@test")
    finally:
        purge_queues(["batch.mail"])

    good.refresh_from_db()
    bad.refresh_from_db()
    assert good.state == TaskState.SUCCEEDED and good.result["sent"] == 3
    assert good.progress_percent == 100
    assert sorted(m.to[0] for m in mail.outbox) == [f"person{i}@example.com" for i in range(3)]
    assert (bad.state, bad.attempt) == (TaskState.FAILED, 1), "max_attempts=3, yet not retried"
    assert bad.error.type == "batchtasks.core.exceptions.PermanentFailure"
    assert "there is no mail template 'nosuch'" in bad.error.message


@pytest.mark.worker
def test_a_worker_sends_the_mails_through_the_configured_backend(
    start_worker, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    start_worker(
        queues=["batch.mail"],
        env={
            "DJANGO_EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
            "DJANGO_EMAIL_FILE_PATH": str(outbox),
        },
    )
    task = BatchTask.submit(
        "mail.merge", {"template": "welcome", "recipients": people(5), "batch_size": 2}
    )

    wait_for(lambda: BatchTask.objects.get(pk=task.pk).state == TaskState.SUCCEEDED, timeout=60)

    task.refresh_from_db()
    assert task.result["sent"] == 5
    text = "".join(f.read_text() for f in sorted(outbox.iterdir()))
    messages = [
        email.message_from_string(part, policy=email.policy.default)
        for part in text.split("-" * 79 + "\n")
        if part.strip()
    ]
    assert sorted(m["To"] for m in messages) == [f"person{i}@example.com" for i in range(5)]
    assert {m["Subject"] for m in messages} == {
        f"Welcome to batchtasks, Person {i}" for i in range(5)
    }
