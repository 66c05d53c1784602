"""Which devices train now: at most `size` at once, the rest score with the global weights (resting).

Cross-device federated learning samples a few clients per round; here the sample is what bounds a
fleet's memory. A training device holds its own copy of the weights, the optimiser's two moments and
the weights it last reported (~150 KB for the default model); a resting one scores with the global
version's weights, held once for all devices (`shared_flat`), and keeps only its normaliser,
thresholds, checks and context (a few KB). A device trains one round (until its update of
`push_every` samples is pushed), then, if others wait, rests and queues again; devices are admitted in
the order they asked. A waiting device that has not asked again for longer than four asks per device
known (it went quiet) loses its place, so that silent devices never hold the free places. A resting
device adopts each new version as it is: `ClientConfig.personal_mix` keeps a share of what a device
learned, and a resting one learned nothing since its push.

With `size` at least the fleet, every device trains all the time and nothing changes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from flead.federated.weights import Weights
from flead.model.network import Network

if TYPE_CHECKING:
    from flead.federated.device import DeviceClient


class TrainingCohort:
    def __init__(self, size: int | None) -> None:
        if size is not None and size < 1:
            raise ValueError(f"the training cohort needs size >= 1 (or None: no limit), got {size}")
        self.size = size
        self.training: set[str] = set()
        self.waiting: OrderedDict[str, int] = OrderedDict()  # device -> the ask it last asked at
        self.asks = 0

    def admit(self, client: DeviceClient) -> bool:
        """Before a device's batch: whether it trains on it (resting it, if it may not). A device the
        cohort does not know (new, or restored from a checkpoint) asks like any other."""
        device = client.device_id
        if device in self.training:
            return True
        self.asks += 1
        if self.size is None or (len(self.training) < self.size and self._next_in_line(device)):
            self.waiting.pop(device, None)
            self.training.add(device)
            client.wake()
            return True
        self.waiting[device] = self.asks  # a device waiting already keeps its place
        if client.training:
            client.rest()
        return False

    def _next_in_line(self, device: str) -> bool:
        """Whether `device` is among the first waiting devices that the free places can take."""
        free = self.size - len(self.training)
        quiet = 4 * (len(self.training) + len(self.waiting))
        while self.waiting:  # drop the quiet heads of the queue
            head, asked = next(iter(self.waiting.items()))
            if head == device or self.asks - asked <= quiet:
                break
            del self.waiting[head]
        for i, waiting in enumerate(self.waiting):
            if i >= free:
                return False
            if waiting == device:
                return True
        return len(self.waiting) < free  # not waiting yet: only if nobody waiting needs the place

    def after_push(self, client: DeviceClient) -> None:
        """After a device's update was taken: a device whose round is done rests and queues again,
        if other devices wait."""
        if self.size is None or client.round_samples < client.push_every:
            return
        if not self.waiting:  # nobody needs the place: the next round starts now, as without a cohort
            client.round_samples = 0
            return
        self.training.discard(client.device_id)
        self.waiting[client.device_id] = self.asks
        client.rest()

    def summary(self) -> dict:
        return {"size": self.size, "training": len(self.training), "waiting": len(self.waiting)}

    def state_dict(self) -> dict:
        """Who trains, who waits since which ask: with its devices' states, what makes a restored
        cohort admit the devices an uninterrupted one would."""
        return {
            "training": sorted(self.training),
            "waiting": [[device, asked] for device, asked in self.waiting.items()],
            "asks": self.asks,
        }

    @classmethod
    def from_state_dict(cls, size: int | None, state: dict | None) -> TrainingCohort:
        cohort = cls(size)
        if state is not None:
            cohort.training = {str(device) for device in state["training"]}
            cohort.waiting = OrderedDict((str(device), int(asked)) for device, asked in state["waiting"])
            cohort.asks = int(state["asks"])
        return cohort


_FLAT: OrderedDict[int, tuple[Weights, np.ndarray]] = OrderedDict()
_FLAT_VERSIONS = 8  # versions whose flat weights are kept: more than a fleet adopts at once


def shared_flat(weights: Weights, network: Network) -> np.ndarray:
    """`weights` (a global version's, read-only) as one read-only vector in `network`'s layout, made
    once per weights object and shared by every device that rests on them."""
    key = id(weights)
    cached = _FLAT.get(key)
    if cached is not None and cached[0] is weights:
        _FLAT.move_to_end(key)
        return cached[1]
    flat = network.flatten(weights)
    flat.flags.writeable = False
    _FLAT[key] = (weights, flat)
    while len(_FLAT) > _FLAT_VERSIONS:
        _FLAT.popitem(last=False)
    return flat
