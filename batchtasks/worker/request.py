"""Celery's request of a run message: acked when a pool process takes it if the message
says so (``transport.publish.ACK_HEADER``), else after its runs (``acks_late``).

A late ack holds the worker's next message until a run ends (prefetch 1 counts unacked
messages): the pool process then waits for the ack and the next fetch, a round trip to
the broker on the way from one task to the next, which tiny tasks one per message feel.
An early ack lets the worker fetch the next message while the run goes on, as plain
Celery does. The dispatcher asks for it only for messages of short runs (measured, at
most ``EARLY_ACK_SECONDS`` all told), because a message fetched early waits behind the
run in front of it while another worker may be idle. Nothing is lost by it: the task's
row is ``queued`` until a claim, and the sweeper publishes a queued task again whose
message was lost (``REPUBLISH_AFTER``); a run whose pool process dies is ended by the
heartbeat as for a late-acked one (the requeue Celery skips for an acked message would
claim nothing).
"""

from __future__ import annotations

from celery.worker.request import Request

from ..transport.publish import ACK_EARLY, ACK_HEADER


class RunRequest(Request):
    """A run message's request (``RUN_OPTIONS["Request"]``)."""

    def on_accepted(self, pid: str, time_accepted: float) -> None:
        super().on_accepted(pid, time_accepted)
        if self.request_dict.get(ACK_HEADER) == ACK_EARLY:
            self.acknowledge()
