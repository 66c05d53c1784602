"""Partition assignment changes, bridged from kafka-python's IO thread to the trainer.

kafka-python (3.x) runs rebalance listeners on its IO event loop, the one that also sends heartbeats,
while the consume loop waits inside ``poll()``. The trainer's handlers do blocking MongoDB work
(checkpoint on revocation, restore on assignment), so they run in a worker thread and the listener
awaits them with short non-blocking sleeps: heartbeats keep flowing and the consume loop is still
parked in ``poll()``, so the handlers have the trainer's state to themselves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from kafka import AsyncConsumerRebalanceListener
from kafka.net.selector import KernelEvent

WAIT_STEP_S = 0.02


class RebalanceHandler:
    """What the trainer does on assignment changes (each called with a set of TopicPartition)."""

    def partitions_revoked(self, partitions: set) -> None: ...
    def partitions_assigned(self, partitions: set) -> None: ...
    def partitions_lost(self, partitions: set) -> None: ...


class ThreadedRebalanceListener(AsyncConsumerRebalanceListener):
    def __init__(self, handler: RebalanceHandler) -> None:
        self.handler = handler

    async def on_partitions_revoked(self, revoked) -> None:
        await _in_worker(self.handler.partitions_revoked, set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        await _in_worker(self.handler.partitions_assigned, set(assigned))

    async def on_partitions_lost(self, lost) -> None:
        await _in_worker(self.handler.partitions_lost, set(lost))


async def _in_worker(function: Callable[[set], None], partitions: set) -> None:
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            function(partitions)
        except BaseException as exc:  # re-raised on the event loop, where kafka-python logs it
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="flead-rebalance", daemon=True).start()
    while not done.is_set():
        await KernelEvent("_sleep", WAIT_STEP_S)  # kafka-python's loop sleep: yields to heartbeats
    if failure:
        raise failure[0]
