"""The shop's tasks on batchtasks: examples/celery_app/shop/tasks.py, converted."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from batchtasks import BatchTaskPlugin, batchtask


def mail_receipt(order: int, email: str) -> None:
    """Stands for a mail server that may refuse a connection."""
    if not email:
        raise ValueError(f"order {order} has no email address")


# autoretry_for -> retry_on; max_retries=3 -> max_attempts=4 (the first run counts);
# time_limit / soft_time_limit -> timeout / soft_timeout; rate_limit is cluster-wide.
@batchtask(
    "shop.send_receipt",
    queue="batch.shop",
    max_attempts=4,
    retry_backoff=2,
    timeout=60,
    soft_timeout=50,
    rate_limit="10/s",
)
class SendReceipt(BatchTaskPlugin):
    retry_on = (ConnectionError,)

    @dataclass
    class Params:
        order: int
        email: str

    def run(self, params: Any) -> object:
        mail_receipt(params["order"], params["email"])
        return {"order": params["order"], "sent_to": params["email"]}


# update_state(state="PROGRESS") -> progress(); the beat entry -> schedule=.
@batchtask(
    "shop.build_report",
    queue="batch.shop",
    timeout=600,
    schedule={"cron": "30 2 * * *", "params": {"month": 5}},
)
class BuildReport(BatchTaskPlugin):
    @dataclass
    class Params:
        month: int

    def run(self, params: Any) -> object:
        for step in range(1, 11):
            self.check_cancelled()
            self.progress(step * 10, f"step {step} of 10")
            time.sleep(0.05)
        return {"month": params["month"], "rows": 10}


@batchtask("shop.price", queue="batch.shop")
class Price(BatchTaskPlugin):
    def run(self, params: Any) -> object:
        return {"order": params["order"], "price": params["order"] * 10}


# A chord's callback got its header's results as its argument; a task submitted with
# group.then() reads them from the database.
@batchtask("shop.total", queue="batch.shop")
class Total(BatchTaskPlugin):
    def run(self, params: Any) -> object:
        return sum(result["price"] for result in self.parent_results().values())
