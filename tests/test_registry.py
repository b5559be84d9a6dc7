"""Declaring task types and settings: mistakes are refused with a message naming the fix."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from batchtasks import BatchTaskPlugin, batchtask
from batchtasks.core.conf import BatchTasksSettings, get_settings
from batchtasks.core.exceptions import (
    ConfigurationError,
    DuplicateTaskType,
    InvalidTaskOption,
    UnknownTaskType,
)
from batchtasks.core.plugin import LocalContext
from batchtasks.core.registry import registry
from batchtasks.core.states import STATE_CODES, TaskState


@pytest.fixture
def cleanup() -> Any:
    names: list[str] = []
    yield names
    for name in names:
        registry.unregister(name)


def test_a_decorated_class_is_registered_with_its_options(cleanup: list[str]) -> None:
    cleanup.append("tests.reg")

    @batchtask("tests.reg", max_concurrency=3, timeout=timedelta(minutes=2), priority=50)
    class Reg(BatchTaskPlugin):
        """Make a report."""

        def run(self, params: Any) -> int:
            return 1

    spec = registry.get("tests.reg")
    values = spec.definition_values()
    assert (spec.plugin, Reg.type_name) == (Reg, "tests.reg")
    assert values["queue"] == "batch.tests.reg"
    assert (values["max_concurrency"], values["timeout"], values["priority"]) == (3, 120, 50)
    assert values["description"] == "Make a report."
    assert spec.definition_values({"max_concurrency": 9})["max_concurrency"] == 9


def test_unknown_options_are_named() -> None:
    with pytest.raises(InvalidTaskOption) as error:
        batchtask("tests.bad", max_concurency=2)
    assert "'max_concurency'" in str(error.value) and "max_concurrency" in str(error.value)


@pytest.mark.parametrize(
    "options",
    [
        {"max_concurrency": 0},
        {"max_concurrency": "2"},
        {"priority": 101},
        {"timeout": -1},
        {"timeout": timedelta(seconds=1.5)},
        {"timeout": 10, "soft_timeout": 10},
        {"max_attempts": 0},
        {"retention": -1},
        {"isolation": "thread"},
        {"memory_limit": 0},
        {"inactivity_timeout": 0},
        {"queue": "has space"},
        {"queue": "batch.x\n"},
        {"queue": "batch.x\n  evil: {}"},
        {"description": 3},
    ],
)
def test_bad_option_values_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidTaskOption):
        batchtask("tests.bad", **options)


def test_bad_names_and_targets_are_refused() -> None:
    with pytest.raises(InvalidTaskOption):
        batchtask("has space")
    with pytest.raises(InvalidTaskOption, match=r"'tests\.x\\n'"):
        batchtask("tests.x\n")

    with pytest.raises(InvalidTaskOption, match=r"subclass of batchtasks\.BatchTaskPlugin"):
        batchtask("tests.fn")(lambda params: None)  # type: ignore[arg-type, type-var]

    class NoRun(BatchTaskPlugin):
        pass

    with pytest.raises(InvalidTaskOption, match="must override run"):
        batchtask("tests.norun")(NoRun)


def test_two_classes_cannot_share_a_name(cleanup: list[str]) -> None:
    cleanup.append("tests.dup")

    @batchtask("tests.dup")
    class One(BatchTaskPlugin):
        def run(self, params: Any) -> None:
            return None

    class Two(BatchTaskPlugin):
        def run(self, params: Any) -> None:
            return None

    with pytest.raises(DuplicateTaskType, match="One"):
        batchtask("tests.dup")(Two)
    batchtask("tests.dup")(One)  # the same class again (a reload) is fine


def test_unknown_type_suggests_close_names() -> None:
    with pytest.raises(UnknownTaskType, match=r"reports\.users_csv"):
        registry.get("reports.user_csv")


def test_unknown_settings_keys_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="'PLUGIN'"):
        BatchTasksSettings.from_dict({"PLUGIN": []})
    with pytest.raises(ConfigurationError, match="DISPATCH_WINDOW"):
        BatchTasksSettings.from_dict({"DISPATCH_WINDOW": 0})
    with pytest.raises(ConfigurationError, match="PLUGINS"):
        BatchTasksSettings.from_dict({"PLUGINS": "plugins.examples"})


@pytest.mark.parametrize(
    "bad",
    [
        {"QUEUES": {"batch.x\nevil": {"max_concurrency": 1}}},
        {"QUEUES": {"batch x": {}}},
        {"QUEUE_PREFIX": "batch $("},
        {"QUEUE_PREFIX": "batch.\n"},
    ],
)
def test_queue_names_in_settings_follow_the_rule_of_queue_names_in_code(
    bad: dict[str, Any],
) -> None:
    with pytest.raises(ConfigurationError, match=r"letters, digits and \. _ : -"):
        BatchTasksSettings.from_dict(bad)


def test_environment_overrides_settings(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    monkeypatch.setenv("BATCHTASKS_DISPATCH_WINDOW", "7")
    monkeypatch.setenv("BATCHTASKS_KEEP_DB_CONNECTIONS", "false")
    settings.BATCHTASKS = {**settings.BATCHTASKS, "DISPATCH_WINDOW": 3}

    conf = get_settings()

    assert (conf.DISPATCH_WINDOW, conf.KEEP_DB_CONNECTIONS) == (7, False)
    monkeypatch.setenv("BATCHTASKS_DISPATCH_WINDOW", "many")
    settings.BATCHTASKS = {**settings.BATCHTASKS}
    with pytest.raises(ConfigurationError, match="BATCHTASKS_DISPATCH_WINDOW"):
        get_settings()


def test_the_environment_sets_who_may_scrape_the_metrics(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    monkeypatch.setenv("BATCHTASKS_METRICS_AUTH", "token, ip")
    monkeypatch.setenv("BATCHTASKS_METRICS_TOKEN", "a-long-random-token")
    monkeypatch.setenv("BATCHTASKS_METRICS_ALLOW", "10.0.0.0/8,2001:db8::/32")
    settings.BATCHTASKS = {**settings.BATCHTASKS, "METRICS_AUTH": ["staff"]}

    conf = get_settings()

    assert conf.METRICS_AUTH == ("token", "ip")
    assert conf.METRICS_ALLOW == ("10.0.0.0/8", "2001:db8::/32")
    assert conf.METRICS_TOKEN == "a-long-random-token"
    monkeypatch.setenv("BATCHTASKS_METRICS_ALLOW", "10.0.0.0/8,the office")
    settings.BATCHTASKS = {**settings.BATCHTASKS}
    with pytest.raises(ConfigurationError, match="'the office'"):
        get_settings()


def test_a_flag_in_the_environment_that_is_neither_true_nor_false_is_refused(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    monkeypatch.setenv("BATCHTASKS_SYNCHRONOUS_COMMIT", "ture")
    settings.BATCHTASKS = {**settings.BATCHTASKS}

    with pytest.raises(ConfigurationError, match=r"BATCHTASKS_SYNCHRONOUS_COMMIT='ture'"):
        get_settings()


def test_state_codes_follow_superoffice() -> None:
    assert [STATE_CODES[s] for s in ("new", "queued", "running", "succeeded", "failed")] == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert TaskState.CANCELLED.code == 5 and TaskState.CANCELLED.is_final
    assert not TaskState.RUNNING.is_final


def test_a_plugin_runs_directly_with_a_local_context() -> None:
    from plugins.examples import Progress

    context = LocalContext()
    result = Progress(context).run({"steps": 4, "delay": 0})

    assert result == {"steps": 4}
    assert [p for p, _ in context.progress] == [25, 50, 75, 100]
    with pytest.raises(ValueError, match="0 to 100"):
        Progress(context).progress(120)
