"""The chaos test: faults under load on a container stack, judged from a ledger outside
the task table (``python -m bench.chaos``; ``make chaos``)."""
