"""One device's side of federation around its `OnlineDetector`: adopt a global version, train, push.

The simulation and the stream trainer both drive devices through this class, so what is measured
offline is what runs online. The protocol is the one in `flead.federated.client`.

Update ids are ``{device}:{epoch}:{sequence}``: `epoch` is drawn at random for every new device state
and kept with it (a restored state continues its sequence), so a device whose state starts over (lost,
reset, another deployment on the same API) never repeats an id the API has seen, which would be
answered "duplicate" and dropped.
"""

from __future__ import annotations

import secrets

import numpy as np
import polars as pl

from flead.federated.client import ClientConfig, personalise, weight_delta
from flead.federated.cohort import shared_flat
from flead.federated.state import GlobalState
from flead.federated.update import LocalUpdate
from flead.federated.weights import Weights
from flead.model.detector import Batch, OnlineDetector


class DeviceClient:
    def __init__(
        self,
        device_id: str,
        detector: OnlineDetector,
        client: ClientConfig | None = None,
        push_every: int = 1024,
    ) -> None:
        if push_every < 1:
            raise ValueError(f"push_every must be >= 1, got {push_every}")
        self.device_id = device_id
        self.detector = detector
        self.client = client or ClientConfig()
        self.push_every = push_every
        self.base_version: int | None = None
        self.adopted: dict[str, np.ndarray] | None = None  # the global weights adopted last
        self.anchor: dict[str, np.ndarray] | None = None  # FedProx anchor: weights at that adoption
        self.reported: dict[str, np.ndarray] | None = None  # weights as of the last push
        self.epoch = new_epoch()  # of this state; with `sequence` it makes update ids unique
        self.sequence = 0
        # A resting device scores with the adopted global weights, shared, and learns nothing
        # (`flead.federated.cohort`); `round_samples`: what it learned since it last started training.
        self.training = True
        self.round_samples = 0

    def wake(self) -> None:
        """Train from the next batch (the weights are copied when it first learns)."""
        self.training, self.round_samples = True, 0

    def rest(self) -> None:
        """Score with the adopted global weights, shared with every resting device, and stop learning:
        the weights learned since the last push are dropped (they were pushed), with the optimiser."""
        self.training = False
        self.detector.optimizer.reset()
        if self.adopted is not None:
            self._share(self.adopted)

    def _share(self, weights: Weights) -> None:
        self.detector.share_weights(shared_flat(weights, self.detector.model.network))
        self.reported = self.adopted
        self.anchor = self.adopted if self.client.proximal_mu > 0 else None
        self.detector.reset_sample_counter()

    def adopt(self, state: GlobalState) -> None:
        """Continue from global `state`, keeping a `personal_mix` share of what was learned locally."""
        if self.adopted is None or not self.training:
            # Nothing learned to keep: score with the global weights themselves, held once for every
            # such device; the first learning step copies them.
            self.adopted, self.base_version = state.weights, state.version
            self._share(state.weights)
            return
        weights = personalise(
            self.detector.get_weights(), state.weights, self.adopted, self.client.personal_mix
        )
        self.detector.set_weights(weights)
        # Both equal the detector's weights now and are only ever read, so they share one object.
        self.anchor = weights if self.client.proximal_mu > 0 else None  # FedProx only
        self.reported = weights
        self.adopted = state.weights
        self.base_version = state.version
        self.detector.reset_sample_counter()

    def process(
        self, batch: Batch, *, ts: np.ndarray | None = None, learn: bool = True, explain: bool = False
    ) -> pl.DataFrame:
        """Score, judge and (when `learn`) train on one micro-batch of this device's readings (see
        `OnlineDetector.process_many`; `explain` adds the per-feature errors)."""
        mu = self.client.proximal_mu if self.anchor is not None else 0.0
        return self.detector.process_many(
            batch, ts=ts, learn=learn and self.training, proximal_mu=mu, anchor=self.anchor, explain=explain
        )

    def take_update(self, *, force: bool = False) -> LocalUpdate | None:
        """The learning since the last push as a delta, once `push_every` samples (or any, if forced)."""
        samples = self.detector.n_samples_seen
        if self.base_version is None or samples == 0 or (samples < self.push_every and not force):
            return None
        loss = self.detector.model.mean_loss
        current = self.detector.get_weights()
        delta = weight_delta(current, self.reported)
        self.reported = current
        self.detector.reset_sample_counter()
        self.round_samples += samples
        self.sequence += 1
        return LocalUpdate(
            device_id=self.device_id,
            update_id=f"{self.device_id}:{self.epoch}:{self.sequence}",
            base_version=self.base_version,
            n_samples=samples,
            arrays=delta,
            kind="delta",
            metrics={} if loss is None else {"loss": loss},
        )


def new_epoch() -> str:
    """A random token for a new device state (8 hex digits: 2**32 states before a likely repeat)."""
    return secrets.token_hex(4)
