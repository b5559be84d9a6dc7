"""Structured logs: every record written while a task runs names the task, its type and
its attempt; ``LOG_FORMAT=json`` writes one JSON object a line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pythonjsonlogger.json import JsonFormatter

from batchtasks import BatchTask
from batchtasks.core.logcontext import (
    TaskLogFilter,
    TaskTextFormatter,
    current_task,
    log_context,
)
from tests.workers import Worker, wait_for


def records_of(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    """A logger whose handler has the task filter and ``formatter``, and its output."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(TaskLogFilter())
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"tests.logging.{id(out)}")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    return logger, out


def test_records_inside_a_task_context_carry_its_id_type_and_attempt() -> None:
    logger, out = records_of(JsonFormatter("%(levelname)s %(message)s"))
    logger.info("before")
    with log_context(7, "reports.users_csv", 2):
        logger.info("during n=%s", 1)
    logger.info("after")

    before, during, after = (json.loads(line) for line in out.getvalue().splitlines())
    assert during == {
        "levelname": "INFO", "message": "during n=1",
        "task_id": 7, "task_type": "reports.users_csv", "attempt": 2,
    }  # fmt: skip
    assert "task_id" not in before and "task_id" not in after
    assert current_task() is None


def test_the_text_format_appends_the_task_fields_before_a_traceback() -> None:
    logger, out = records_of(TaskTextFormatter("%(levelname)s %(message)s"))
    logger.info("outside")
    with log_context(9, "examples.fail", 1):
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")

    lines = out.getvalue().splitlines()
    assert lines[0] == "INFO outside"
    assert lines[1] == "ERROR failed task=9 type=examples.fail attempt=1"
    assert lines[2].startswith("Traceback") and lines[-1] == "ValueError: boom"


def test_fields_the_caller_passed_are_kept() -> None:
    logger, out = records_of(JsonFormatter("%(message)s"))
    with log_context(3, "examples.noop", 1):
        logger.info("other task", extra={"task_id": 4})
    assert json.loads(out.getvalue())["task_id"] == 4


def json_lines(text: str) -> Iterator[dict[str, Any]]:
    """The worker log's JSON records (Celery's banner is printed, not logged)."""
    for line in text.splitlines():
        if line.startswith("{"):
            yield json.loads(line)


@pytest.mark.worker
def test_a_worker_with_log_format_json_names_the_task_in_the_plugins_records(
    start_worker: Callable[..., Worker],
) -> None:
    worker = start_worker("wlog", queues=["batch.tests.log_line"], env={"LOG_FORMAT": "json"})
    task = BatchTask.submit("tests.log_line", {"word": "marmalade"})
    assert task.wait(timeout=60).state == "succeeded"

    def said() -> list[dict[str, Any]]:
        return [r for r in json_lines(worker.log()) if "word=marmalade" in r["message"]]

    (record,) = wait_for(said, timeout=60)
    assert (record["task_id"], record["task_type"], record["attempt"]) == (
        task.pk, "tests.log_line", task.attempt,
    )  # fmt: skip
    assert record["level"] == "INFO" and record["logger"] == "tests.log_plugins"
    # Records outside any run (the worker starting up) are JSON too, without task fields.
    ready = [r for r in json_lines(worker.log()) if r["message"].endswith(" ready.")]
    assert ready and "task_id" not in ready[0]
