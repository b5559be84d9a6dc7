"""Submit the shop's work on batchtasks and wait for it (a worker must run:
``celery -A examples.converted worker -Q batch.shop``)."""

from __future__ import annotations

from datetime import timedelta

import django


def main() -> None:
    django.setup()
    from batchtasks import BatchTask

    # apply_async(countdown=1, priority=5) -> submit(run_after=…, priority=…)
    receipt = BatchTask.submit(
        "shop.send_receipt",
        {"order": 7, "email": "ann@example.com"},
        run_after=timedelta(seconds=1),
        priority=5,
    )
    print("receipt", receipt.wait(timeout=60).result)  # AsyncResult.get() -> wait()

    # chord(group(price.s(o) …), total.s()) -> submit_many(…).then(…)
    prices = BatchTask.submit_many("shop.price", [{"order": order} for order in (1, 2, 3)])
    total = prices.then("shop.total")
    print("total", total.wait(timeout=60).result)

    # chain(send_receipt.si(…), build_report.si(…)) -> depends_on
    first = BatchTask.submit("shop.send_receipt", {"order": 8, "email": "bob@example.com"})
    report = BatchTask.submit("shop.build_report", {"month": 5}, depends_on=[first])
    print("report", report.wait(timeout=60).result)

    # revoke(terminate=True) -> cancel(); a task not yet started is cancelled at once
    late = BatchTask.submit("shop.build_report", {"month": 6}, run_after=timedelta(hours=1))
    late.cancel()
    late.refresh_from_db()
    print("cancelled", late.state)


if __name__ == "__main__":
    main()
