"""The fault picker: a thread that fires the chaos scenarios
(``bench.chaos.scenarios.SCENARIOS``, so new ones join by themselves) at random, after
random quiet gaps, one at a time, and keeps their timeline."""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import datetime

from bench.chaos.ledger import Faults
from bench.chaos.scenarios import SCENARIOS, Settings
from bench.chaos.stack import Stack

from .judge import Fault

logger = logging.getLogger("bench.soak")


class Picker(threading.Thread):
    """Fire ``names`` at random until ``stop_by`` (monotonic): after each fault (and
    before the first) a quiet gap drawn from ``gap`` seconds. A fault is never cut
    short, so the last may end after ``stop_by``; none starts after it."""

    def __init__(
        self,
        settings: Settings,
        *,
        names: list[str],
        gap: tuple[float, float],
        stop_by: float,
        rng: random.Random,
    ) -> None:
        super().__init__(name="soak-faults", daemon=True)
        self.stack = Stack()
        self.settings, self.names, self.gap, self.stop_by, self.rng = (
            settings,
            names,
            gap,
            stop_by,
            rng,
        )
        self.faults = Faults()
        self.timeline: list[Fault] = []
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def run(self) -> None:
        while True:
            wait = self.rng.uniform(*self.gap)
            if time.monotonic() + wait > self.stop_by or self._halt.wait(wait):
                return
            self.fire(self.rng.choice(self.names))

    def fire(self, name: str) -> Fault:
        """Cause one fault; record it (with its error, if the scenario failed)."""
        start = self.stack.now()
        print(f"[soak] fault {name} at {start:%H:%M:%S}", flush=True)
        try:
            begun, ended = SCENARIOS[name](self.stack, self.faults, self.settings)
            fault = Fault(name, begun, ended)
        except Exception as exc:
            logger.exception("fault %s failed", name)
            fault = Fault(name, start, self._now(start), error=repr(exc))
        self.timeline.append(fault)
        return fault

    def _now(self, fallback: datetime) -> datetime:
        try:
            return self.stack.now()
        except Exception:
            return fallback
