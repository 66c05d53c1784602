"""The device side of federation: what the server tells clients, and how a device adopts a new global
model while keeping what it learned locally.

The stream trainer's loop for one device (``mix`` and ``mu`` from ``ClientConfig``):

1. Adopt global version ``v``: ``weights = personalise(local, new_global, last_adopted_global, mix)``
   (the first time, simply the global weights). Remember ``start = weights`` (the FedProx anchor),
   ``reported = weights`` and ``base_version = v``.
2. Train online with ``learn_many(..., proximal_mu=mu, anchor=start)``.
3. Push: ``LocalUpdate(kind="delta", arrays=weight_delta(current, reported), base_version=v,
   n_samples=<samples learned since the last push>, update_id=<unique per device, e.g. a sequence>)``,
   then ``reported = current``. Deltas are incremental, so pushing several times before the next
   version is made never counts the same learning twice. Each push is one entry in the server's
   sample-weighted average of deltas (not a sum), so push at a steady cadence, e.g. every N samples.
4. Pull: when a newer version exists, go to 1. Push before pulling: learning not pushed when a device
   adopts a new global is only kept locally (through ``mix``), never federated.

A device that only ever sends full weights (``kind="weights"``) must use ``mix=0`` and push once per
adopted version; deltas are preferred.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from flead.federated.weights import Weights


@dataclass(frozen=True)
class ClientConfig:
    """Served to devices with the global model.

    ``proximal_mu`` is FedProx's (Li et al. 2020) proximal weight: the client adds
    ``mu / 2 * ||w - anchor||**2`` to its loss, with the anchor at the weights it started from at its
    last adoption, which bounds how far local training drifts between syncs on non-IID devices
    (0 = plain local training). ``personal_mix`` is how much of its own specialisation a device keeps
    when adopting a new global (see ``personalise``).
    """

    proximal_mu: float = 0.0
    personal_mix: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.proximal_mu < float("inf"):
            raise ValueError(f"proximal_mu must be a finite number >= 0, got {self.proximal_mu!r}")
        if not 0.0 <= self.personal_mix <= 1.0:
            raise ValueError(f"personal_mix must be in [0, 1], got {self.personal_mix!r}")


def personalise(
    local_weights: Mapping[str, np.ndarray],
    new_global: Mapping[str, np.ndarray],
    old_global: Mapping[str, np.ndarray],
    mix: float,
) -> Weights:
    """The weights a device continues training from: ``new_global + mix * (local - old_global)``.

    ``old_global`` is the global model the device adopted last, so ``local - old_global`` is what the
    device learned on its own since. ``mix=0`` adopts the new global as it is (then local training
    resumes from there); ``mix=1`` keeps the whole local specialisation on top of it. That learning also
    reached the new global, as one of the averaged updates, so what ``mix`` adds is the device's
    personal offset. Applied at every adoption, an offset decays geometrically (by ``mix``) unless the
    device's own data keeps renewing it: the detector stays close to its own sensor without drifting
    away from the federation, and its scores do not jump at every sync as they can with ``mix=0``.
    Returns fresh, writable float32 arrays.
    """
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix!r}")
    if set(local_weights) != set(new_global) or set(old_global) != set(new_global):
        raise ValueError("local, new and old global weights must have the same array names")
    adopted = {}
    for name, target in new_global.items():
        offset = np.asarray(local_weights[name], dtype=np.float64) - np.asarray(
            old_global[name], dtype=np.float64
        )
        adopted[name] = (np.asarray(target, dtype=np.float64) + mix * offset).astype(np.float32)
    return adopted


def weight_delta(current: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> Weights:
    """``current - reference`` per array, as float32: the delta a device pushes."""
    if set(current) != set(reference):
        raise ValueError("current and reference weights must have the same array names")
    return {
        name: (np.asarray(array, dtype=np.float64) - np.asarray(reference[name], dtype=np.float64)).astype(
            np.float32
        )
        for name, array in current.items()
    }
