"""One device's side of federation around its `OnlineDetector`: adopt a global version, train, push.

The simulation and the stream trainer both drive devices through this class, so what is measured
offline is what runs online. The protocol is the one in `flead.federated.client`.

With local differential privacy (``privacy.mode == "local"``) every update is clipped and noised here,
on the device, and declares it; the device counts what it released and stops pushing, while it goes on
detecting and learning on its own, once one more update would pass its epsilon budget (the server
refuses such updates too, but by then it would have seen them). With any DP on, a device adopts a new
global version only if the adopted weights do not fit its latest readings worse than its own
(`adoption_guard`): a noised global can be far from every device's data in a small fleet.

Update ids are ``{device}:{epoch}:{sequence}``: `epoch` is drawn at random for every new device state
and kept with it (a restored state continues its sequence), so a device whose state starts over (lost,
reset, another deployment on the same API) never repeats an id the API has seen, which would be
answered "duplicate" and dropped.
"""

from __future__ import annotations

import secrets
from collections import deque

import numpy as np
import polars as pl

from flead.federated.client import ClientConfig, personalise, weight_delta
from flead.federated.cohort import shared_flat
from flead.federated.state import GlobalState
from flead.federated.update import LocalUpdate
from flead.federated.weights import Weights
from flead.model.detector import Batch, OnlineDetector
from flead.privacy.accountant import Contributions, budget_refusal, contributions_epsilon, merge_contributions
from flead.privacy.config import PrivacyConfig
from flead.privacy.mechanism import PrivacyDeclaration, privatise

# A new global is kept when its mean score on the device's latest readings (about GUARD_READINGS of them)
# is within this factor of the device's own weights' (``adoption_guard``). The mean, not the median: a
# noised model can match a flat signal's typical reading and still miss its excursions.
ADOPTION_TOLERANCE = 1.0
GUARD_READINGS = 1024


class DeviceClient:
    def __init__(
        self,
        device_id: str,
        detector: OnlineDetector,
        client: ClientConfig | None = None,
        push_every: int = 1024,
        *,
        privacy: PrivacyConfig | None = None,
        rng: np.random.Generator | None = None,
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
        self.privacy = privacy or PrivacyConfig()
        self.rng = rng or np.random.default_rng()  # local DP's noise
        self.released: Contributions = {}  # local DP: noise multiplier -> updates sent at it
        self.budget_exhausted = False
        self.adoption_guard = self.privacy.enabled
        self.rejected_versions = 0  # globals the guard did not adopt
        self._latest: deque[tuple[Batch, np.ndarray | None]] = deque()  # what the guard judges on

    @property
    def epsilon(self) -> float:
        """The epsilon of the local-DP updates this device sent (0 without local DP)."""
        return contributions_epsilon(self.released, self.privacy.delta)

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
        own = self.detector.get_weights()
        weights = personalise(own, state.weights, self.adopted, self.client.personal_mix)
        # No readings to judge on (e.g. restored from a checkpoint): keep its own weights, to be safe.
        if self.adoption_guard and (not self._latest or not self._fits(weights, own)):
            weights = own
            self.rejected_versions += 1
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
        if self.adoption_guard and learn and self.training:
            # A copy: a trainer's batch can be a view of a whole poll's readings.
            copied = batch.copy() if isinstance(batch, np.ndarray) else batch
            self._latest.append((copied, None if ts is None else np.array(ts)))
            while sum(len(b) for b, _ in self._latest) - len(self._latest[0][0]) >= GUARD_READINGS:
                self._latest.popleft()
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
        declared = None
        if self.privacy.mode == "local":
            if not self._may_release():
                return None
            z, clip_norm = self.privacy.noise_multiplier, self.privacy.clip_norm
            delta = privatise(delta, clip_norm, z, self.rng)
            declared = PrivacyDeclaration(clip_norm, z).to_dict()
            self.released[z] = self.released.get(z, 0) + 1
        self.sequence += 1
        return LocalUpdate(
            device_id=self.device_id,
            update_id=f"{self.device_id}:{self.epoch}:{self.sequence}",
            base_version=self.base_version,
            n_samples=samples,
            arrays=delta,
            kind="delta",
            metrics={} if loss is None else {"loss": loss},
            privacy=declared,
        )

    def _may_release(self) -> bool:
        """Whether one more local-DP update stays within the budget (once not, never again)."""
        if not self.budget_exhausted:
            z = self.privacy.noise_multiplier
            after = contributions_epsilon(merge_contributions(self.released, {z: 1}), self.privacy.delta)
            reason = budget_refusal(self.epsilon, after, self.privacy.epsilon_budget, self.privacy.delta)
            self.budget_exhausted = reason is not None
        return not self.budget_exhausted

    def _fits(self, candidate: Weights, own: Weights) -> bool:
        """Whether ``candidate`` scores the latest readings (mean) no worse than ``own`` does."""
        means = []
        for weights in (candidate, own):
            self.detector.set_weights(weights)
            scores = np.concatenate([self.detector.score_many(b, ts=t) for b, t in self._latest])
            means.append(float(scores.mean()))
        return means[0] <= means[1] * ADOPTION_TOLERANCE


def new_epoch() -> str:
    """A random token for a new device state (8 hex digits: 2**32 states before a likely repeat)."""
    return secrets.token_hex(4)
