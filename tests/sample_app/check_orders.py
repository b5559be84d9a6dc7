"""The sample project's tests: they use only the fixtures of batchtasks' pytest plugin."""

from __future__ import annotations

import pytest

from batchtasks import TaskState
from tests.sample_app.orders import place_order, total


@pytest.mark.django_db(transaction=True)
def test_placing_an_order_sends_its_receipt(batchtasks_run) -> None:
    receipt = place_order(7, "ann@example.com", [2, 3])

    receipt.refresh_from_db()
    assert receipt.state == TaskState.SUCCEEDED
    assert receipt.result == "receipt for order 7 sent to ann@example.com"
    assert batchtasks_run.types == ["sample.receipt", total.module_path]
    assert batchtasks_run.tasks[1].result == 5


def test_an_order_without_email_fails_its_receipt(batchtasks_run) -> None:
    receipt = place_order(8, "", [1])

    batchtasks_run.run_due()  # a django_db test never commits: run what is due now
    receipt.refresh_from_db()
    assert receipt.state == TaskState.FAILED
    assert "needs an email address" in receipt.error.message


def test_placing_an_order_submits_a_receipt_and_a_total(batchtasks_capture) -> None:
    place_order(9, "bob@example.com", [4])

    assert batchtasks_capture.types == ["sample.receipt", total.module_path]
    assert batchtasks_capture.params[0] == {"order": 9, "email": "bob@example.com"}
    assert all(task.started_at is None for task in batchtasks_capture.tasks)  # none ran
