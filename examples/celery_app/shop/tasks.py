"""The shop's tasks on plain Celery."""

from __future__ import annotations

import time

from celery import shared_task


def mail_receipt(order: int, email: str) -> None:
    """Stands for a mail server that may refuse a connection."""
    if not email:
        raise ValueError(f"order {order} has no email address")


@shared_task(
    autoretry_for=(ConnectionError,),
    max_retries=3,
    retry_backoff=2,
    time_limit=60,
    soft_time_limit=50,
    rate_limit="10/s",
)
def send_receipt(order: int, email: str) -> dict:
    mail_receipt(order, email)
    return {"order": order, "sent_to": email}


@shared_task(bind=True, time_limit=600)
def build_report(self, month: int) -> dict:
    for step in range(1, 11):
        self.update_state(state="PROGRESS", meta={"percent": step * 10})
        time.sleep(0.05)
    return {"month": month, "rows": 10}


@shared_task
def price(order: int) -> dict:
    return {"order": order, "price": order * 10}


@shared_task
def total(prices: list[dict]) -> int:
    return sum(item["price"] for item in prices)
