"""A task database of its own (docs/how-to/task-database.md): the router, the checks, and
submit's semantics inside and outside the application's transaction.

The router and check tests run everywhere; the ones that need two databases run on the
task-database leg (.ci/taskdb, tests/settings_taskdb.py) and are skipped elsewhere.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import checks
from django.db import connections, router, transaction
from django.test import Client, override_settings
from django.urls import reverse

from batchtasks.core.conf import BatchTasksSettings
from batchtasks.core.exceptions import ConfigurationError
from batchtasks.core.states import TaskState
from batchtasks.db.router import TaskDatabaseRouter
from batchtasks.models import ApiToken, BatchTask, BatchTaskDefinition
from batchtasks.services import tokens

TWO_DATABASES = "tasks" in settings.DATABASES
two_databases = pytest.mark.skipif(
    not TWO_DATABASES, reason="needs the task database (.ci/taskdb, tests/settings_taskdb.py)"
)
ROUTER = "batchtasks.db.router.TaskDatabaseRouter"


def _errors(ids: set[str]) -> list[checks.CheckMessage]:
    return [m for m in checks.run_checks() if m.id in ids]


# --- the router and the checks ----------------------------------------------------


def test_the_router_has_no_opinion_without_the_setting() -> None:
    with override_settings(BATCHTASKS={**settings.BATCHTASKS, "DATABASE": None}):
        r = TaskDatabaseRouter()
        assert r.db_for_write(BatchTask) is None
        assert r.db_for_read(BatchTask) is None
        assert r.allow_migrate("default", "batchtasks") is None


def test_the_router_sends_the_task_tables_to_the_task_database_and_nothing_else() -> None:
    with override_settings(BATCHTASKS={**settings.BATCHTASKS, "DATABASE": "jobs"}):
        r = TaskDatabaseRouter()
        assert r.db_for_write(BatchTask) == "jobs"
        assert r.db_for_read(BatchTaskDefinition) == "jobs"
        assert r.db_for_read(get_user_model()) is None
        # A task's owner is read from the application's database, not the task's.
        assert r.db_for_read(get_user_model(), instance=BatchTask()) == "default"
        assert r.allow_migrate("jobs", "batchtasks") is True
        assert r.allow_migrate("default", "batchtasks") is False
        assert r.allow_migrate("jobs", "auth") is False
        assert r.allow_migrate("default", "auth") is None
        assert r.allow_relation(BatchTask(), get_user_model()()) is True
        # API tokens are the users' credentials: they stay with the users.
        assert r.db_for_write(ApiToken) is None and r.db_for_read(ApiToken) is None
        assert r.allow_migrate("jobs", "batchtasks", model_name="apitoken") is False
        assert r.allow_migrate("default", "batchtasks", model_name="apitoken") is None


def test_a_task_database_setting_must_be_an_alias() -> None:
    with pytest.raises(ConfigurationError, match=r"must be a database alias"):
        BatchTasksSettings.from_dict({"DATABASE": ""})
    assert BatchTasksSettings.from_dict({"DATABASE": "tasks"}).DATABASE == "tasks"


def test_a_task_database_that_is_not_configured_is_a_check_error() -> None:
    with override_settings(BATCHTASKS={**settings.BATCHTASKS, "DATABASE": "nowhere"}):
        (error,) = _errors({"batchtasks.E006", "batchtasks.E007"})
    assert error.id == "batchtasks.E006"
    assert "'nowhere', which is not a key of DATABASES" in error.msg


@pytest.mark.skipif(TWO_DATABASES, reason="the router is installed on this leg")
def test_a_task_database_without_the_router_is_a_check_error() -> None:
    with override_settings(BATCHTASKS={**settings.BATCHTASKS, "DATABASE": "default"}):
        assert _errors({"batchtasks.E006", "batchtasks.E007"}) == []  # routed there anyway
    connections.settings["jobs"] = settings.DATABASES["default"]  # an alias, unrouted
    try:
        with override_settings(BATCHTASKS={**settings.BATCHTASKS, "DATABASE": "jobs"}):
            (error,) = _errors({"batchtasks.E006", "batchtasks.E007"})
    finally:
        del connections.settings["jobs"]
    assert error.id == "batchtasks.E007"
    assert ROUTER in error.hint


@two_databases
@pytest.mark.django_db(databases="__all__")
def test_the_task_tables_are_in_the_task_database_only() -> None:
    assert router.db_for_write(BatchTask) == "tasks"
    task_tables = connections["tasks"].introspection.table_names()
    app_tables = connections["default"].introspection.table_names()
    assert "batchtasks_batchtask" in task_tables
    assert "batchtasks_batchtask" not in app_tables
    assert "auth_user" in app_tables
    assert "auth_user" not in task_tables
    assert "batchtasks_apitoken" in app_tables
    assert "batchtasks_apitoken" not in task_tables
    assert _errors({"batchtasks.E006", "batchtasks.E007"}) == []


@two_databases
@pytest.mark.django_db(databases="__all__")
def test_an_api_token_of_a_user_of_the_application_database_opens_the_api() -> None:
    user = get_user_model().objects.create_user("tokenholder")
    plaintext = tokens.issue(user, "ci", "submit", None).plaintext

    listed = Client().get(reverse("batchtasks:api-tasks"), HTTP_AUTHORIZATION=f"Bearer {plaintext}")

    assert listed.status_code == 200, listed.content


# --- submit across two databases ----------------------------------------------------


def _stored(pk: int | None) -> bool:
    return pk is not None and BatchTask.objects.filter(pk=pk).exists()


@two_databases
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_submit_in_a_rolled_back_application_transaction_leaves_no_task() -> None:
    before = BatchTask.objects.count()
    with pytest.raises(RuntimeError), transaction.atomic():
        get_user_model().objects.create(username="ann")
        task = BatchTask.submit("examples.noop")
        raise RuntimeError("the view fails")

    assert BatchTask.objects.count() == before
    assert not _stored(task.pk)
    assert not get_user_model().objects.filter(username="ann").exists()


@two_databases
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_submit_in_a_committed_application_transaction_is_stored_at_the_commit() -> None:
    with transaction.atomic():
        user = get_user_model().objects.create(username="bob")
        task = BatchTask.submit("examples.noop", owner=user, description="after commit")
        # Inside the transaction: not yet stored, but its id is taken already.
        assert task.pk is not None
        assert task._state.adding
        assert task.state == TaskState.NEW
        assert not _stored(task.pk)
        pk = task.pk

    assert task.pk == pk  # the same id, now stored, and the same object, now saved
    assert not task._state.adding
    stored = BatchTask.objects.get(pk=pk)
    assert stored.description == "after commit"
    assert stored.owner_id == user.pk
    assert stored.owner == user  # read from the application's database
    assert task.state in {TaskState.NEW, TaskState.QUEUED}


@two_databases
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_submit_outside_any_transaction_is_stored_when_it_returns() -> None:
    task = BatchTask.submit("examples.noop")

    assert not task._state.adding
    # Another connection to the task database sees it at once: it is committed.
    other = connections["tasks"].copy("tasks_other")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT state FROM batchtasks_batchtask WHERE id = %s", [task.pk])
            assert cursor.fetchone() is not None
    finally:
        other.close()


@two_databases
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_submit_in_a_transaction_of_the_task_database_commits_with_it() -> None:
    with pytest.raises(RuntimeError), transaction.atomic(using="tasks"):
        task = BatchTask.submit("examples.noop")
        assert _stored(task.pk)  # inserted in that transaction, as on one database
        raise RuntimeError

    assert not _stored(task.pk)


@two_databases
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_tasks_submitted_in_one_application_transaction_may_depend_on_each_other() -> None:
    with transaction.atomic():
        parent = BatchTask.submit("examples.noop")
        child = BatchTask.submit("examples.noop", depends_on=[parent])
        group = BatchTask.submit_many("examples.noop", [{}, {}])
        assert group.id is not None and list(group) == []

    assert _stored(parent.pk) and _stored(child.pk)
    assert BatchTask.objects.get(pk=child.pk).pending_parents in {0, 1}
    assert len(group) == 2
    assert {t.pk for t in BatchTask.objects.group(group.id)} == {t.pk for t in group}


@two_databases
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_deleting_a_user_unowns_their_tasks_in_the_task_database() -> None:
    user = get_user_model().objects.create(username="cid")
    task = BatchTask.submit("examples.noop", owner=user)

    user.delete()

    assert BatchTask.objects.get(pk=task.pk).owner_id is None


# --- owners in the application's database, tasks in the task database ------------------


@two_databases
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_the_admin_and_the_api_show_filter_and_search_owners_of_the_other_database(
    admin_client: Client,
) -> None:
    dora = get_user_model().objects.create(username="dora")
    hers = BatchTask.submit("examples.noop", owner=dora, description="hers")
    BatchTask.submit("examples.noop", description="nobody's")
    changelist = reverse("admin:batchtasks_batchtask_changelist")

    def listed(query: dict[str, Any]) -> list[int]:
        response = admin_client.get(changelist, query)
        assert response.status_code == 200
        return [task.pk for task in response.context["cl"].result_list]

    assert "dora" in admin_client.get(changelist).content.decode()
    assert listed({"q": "dor"}) == [hers.pk]
    assert listed({"owner__id__exact": dora.pk}) == [hers.pk]
    api = admin_client.get(reverse("batchtasks:api-tasks"), {"owner": "dora"}).json()
    assert [(t["id"], t["owner"]) for t in api["results"]] == [(hers.pk, "dora")]
