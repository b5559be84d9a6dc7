"""Submit the plain Celery shop's work and wait for it (a worker must run:
``celery -A examples.celery_app worker -Q shop``)."""

from __future__ import annotations

from celery import chain, chord, group

from examples.celery_app.shop.tasks import build_report, price, send_receipt, total


def main() -> None:
    receipt = send_receipt.apply_async((7, "ann@example.com"), countdown=1, priority=5)
    print("receipt", receipt.get(timeout=60))
    prices = chord(group(price.s(order) for order in (1, 2, 3)), total.s())()
    print("total", prices.get(timeout=60))
    then = chain(send_receipt.si(8, "bob@example.com"), build_report.si(5))()
    print("report", then.get(timeout=60))


if __name__ == "__main__":
    main()
