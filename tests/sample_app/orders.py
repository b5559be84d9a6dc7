"""The sample project's code: placing an order submits a receipt task and a django.tasks
function that totals the order."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from batchtasks import BatchTask, BatchTaskPlugin, batchtask
from batchtasks.backends.django_tasks import FRAMEWORK

if FRAMEWORK == "django.tasks":
    from django.tasks import task  # type: ignore[import-not-found,unused-ignore]
else:
    from django_tasks import task


@batchtask("sample.receipt")
class Receipt(BatchTaskPlugin):
    """Write the receipt of an order (here: say who gets it)."""

    def run(self, params: Any) -> str:
        if not params["email"]:
            raise ValueError("an order needs an email address for its receipt")
        return f"receipt for order {params['order']} sent to {params['email']}"


@task
def total(prices: list[int]) -> int:
    """The sum of an order's prices."""
    return sum(prices)


def place_order(order: int, email: str, prices: list[int]) -> BatchTask:
    """Save an order: its receipt and its total are worked out in the background."""
    with transaction.atomic():
        receipt = BatchTask.submit("sample.receipt", {"order": order, "email": email})
        total.enqueue(prices)
    return receipt
