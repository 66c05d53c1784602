"""Aggregation strategies behind one interface: ``strategy.aggregate(state, updates) -> AggregationResult``.

Every strategy works on deltas (see ``validation.prepare_update``). Before combining, each delta is
clipped to ``clip_norm`` (when set) and multiplied by its staleness discount; the discount shrinks the
delta itself, as in FedBuff, so a batch of equally stale updates moves the model less than a fresh one.
Then:

- ``fedavg``: the ``n_samples``-weighted mean of the implied client models ``global + delta``. With
  fresh, unclipped updates given as weights, the new weights are exactly
  ``float32(sum(n_i * float64(w_i)) / sum(n_i))`` (summed in submission order).
- ``fedavgm``: server momentum (Hsu et al. 2019): ``v = momentum * v + mean_delta``,
  ``w += server_lr * v``.
- ``fedadam``: Adam on the server (Reddi et al. 2021, Algorithm 2, no bias correction) with the
  pseudo-gradient ``-mean_delta``: ``m = b1 m + (1 - b1) mean_delta``, ``v = b2 v + (1 - b2) mean_delta**2``
  (``v`` starts at ``tau**2``), ``w += server_lr * m / (sqrt(v) + tau)``.
- ``median`` / ``trimmed_mean``: the coordinate-wise median, or the mean after dropping the
  ``floor(trim_fraction * n)`` largest and smallest values of each coordinate, applied with
  ``server_lr``. They ignore ``n_samples``: a sample count is the sender's claim, and weighting by it
  would let one poisoned update buy a majority. Trimming needs ``n >= 1 / trim_fraction`` updates to
  drop anything; the median resists a minority of outliers from 3 updates on.

FedProx is not a server strategy: it is a proximal term in the clients' training (``ClientConfig``).
All arithmetic is float64; the new weights and optimiser state are stored as float32.

Central differential privacy (``config.privacy.mode == "central"``, a trusted server): every delta is
clipped to the privacy clip norm ``C`` and every update counts alike (no ``n_samples`` weights, which
would let one device's share of the aggregate exceed ``C / n``). The averaging strategies get
``N(0, (z C)**2)`` added to the sum of the deltas, so the mean carries ``z C / n``; median and trimmed
mean, whose change for one device's update is not bounded by ``C``, get the noise on every clipped update
before they combine them. What each device released is returned (``AggregationResult.contributions``)
for the accountant; a device whose budget it would pass has its updates refused with the reason. Local
DP updates arrive noised and are aggregated as they are.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import ClassVar, Protocol

import numpy as np

from flead.federated.config import AggregationConfig
from flead.federated.result import AcceptedUpdate, AggregationResult, AggregationSummary, RefusedUpdate
from flead.federated.staleness import staleness_discount, staleness_refusal
from flead.federated.state import GlobalState
from flead.federated.update import LocalUpdate
from flead.federated.validation import History, PreparedUpdate, UpdateRefused, check_identity, prepare_update
from flead.federated.weights import Weights, all_finite
from flead.privacy.accountant import Contributions
from flead.privacy.mechanism import gaussian_noise

Deltas = list[dict[str, np.ndarray]]
ServerState = dict[str, dict[str, np.ndarray]]


class Ledger(Protocol):
    """The devices' privacy spent so far (`flead.privacy.PrivacyLedger`, or the API's in MongoDB)."""

    def refusal(self, device_id: str, extra: Mapping[float, int], budget: float | None) -> str | None: ...


class Strategy(ABC):
    name: ClassVar[str]
    sample_weighted: ClassVar[bool] = True

    def __init__(
        self, config: AggregationConfig | None = None, *, rng: np.random.Generator | None = None
    ) -> None:
        config = config or AggregationConfig(strategy=self.name)
        if config.strategy != self.name:
            raise ValueError(f"{type(self).__name__} needs a config with strategy={self.name!r}")
        self.config = config
        self.server_lr = config.resolved_server_lr
        self.rng = rng or np.random.default_rng()  # central DP's noise

    def aggregate(
        self,
        state: GlobalState,
        updates: Iterable[LocalUpdate],
        *,
        history: History | None = None,
        now: datetime | None = None,
        ledger: Ledger | None = None,
    ) -> AggregationResult:
        """Validate ``updates`` against ``state`` and aggregate the valid ones into version + 1.

        ``history`` (version -> weights) lets full-weight updates based on an older version be turned
        into deltas. A repeated ``(device_id, update_id)`` counts once; the repeat is listed as refused.
        """
        prepared: list[PreparedUpdate] = []
        refused: list[RefusedUpdate] = []
        seen: set[tuple[str, str]] = set()
        for update in updates:
            try:
                check_identity(update)
                if update.key in seen:
                    raise UpdateRefused("duplicate (device_id, update_id) in this batch; counted once")
                prepared.append(prepare_update(update, state, self.config, history))
                seen.add(update.key)
            except UpdateRefused as refusal:
                refused.append(RefusedUpdate.of(update, refusal.reason))
        return self.combine(state, prepared, refused=refused, now=now, ledger=ledger)

    def combine(
        self,
        state: GlobalState,
        prepared: Sequence[PreparedUpdate],
        *,
        refused: Sequence[RefusedUpdate] = (),
        now: datetime | None = None,
        ledger: Ledger | None = None,
    ) -> AggregationResult:
        """Aggregate already validated updates (``prepare_update``) into version + 1.

        Staleness is measured against ``state`` here, so updates prepared against an earlier version are
        discounted (or refused) for the versions that passed since. Under central DP, ``ledger`` (the
        devices' privacy spent so far) enforces the epsilon budget.
        """
        config = self.config
        refused = list(refused)
        usable: list[tuple[PreparedUpdate, int]] = []
        for item in prepared:
            reason = staleness_refusal(item.update.base_version, state.version, config.max_staleness)
            if reason is None:
                usable.append((item, state.version - item.update.base_version))
            else:
                refused.append(RefusedUpdate.of(item.update, reason))
        central = config.privacy.mode == "central"
        contributions: dict[str, Contributions] = {}
        if central:
            usable, contributions = self._within_budget(usable, refused, ledger)

        samples = [int(item.update.n_samples) for item, _ in usable]
        total_samples = sum(samples)
        deltas: Deltas = []
        accepted: list[AcceptedUpdate] = []
        clip_norm = config.privacy.clip_norm if central else config.clip_norm
        for (item, staleness), n_samples in zip(usable, samples, strict=True):
            discount = staleness_discount(staleness, config.staleness_exponent)
            clipped = clip_norm is not None and item.norm > clip_norm
            scale = discount * (clip_norm / item.norm if clipped else 1.0)
            deltas.append(item.delta if scale == 1.0 else {name: a * scale for name, a in item.delta.items()})
            uniform = central or not self.sample_weighted
            weight = 1.0 / len(usable) if uniform else n_samples / total_samples
            accepted.append(
                AcceptedUpdate(
                    device_id=item.update.device_id,
                    update_id=item.update.update_id,
                    base_version=int(item.update.base_version),
                    n_samples=n_samples,
                    staleness=staleness,
                    discount=discount,
                    weight=weight,
                    norm=item.norm,
                    clipped=clipped,
                )
            )
        summary = summarise(usable, accepted, n_refused=len(refused))

        def without_version(reason: str) -> AggregationResult:
            return AggregationResult(state.version, None, tuple(accepted), tuple(refused), summary, reason)

        if len(usable) < config.min_updates:
            if not usable:
                return without_version("no accepted updates")
            return without_version(
                f"{len(usable)} accepted update(s), fewer than min_updates {config.min_updates}"
            )
        if central:
            deltas, samples = self._central_noise(deltas), [1] * len(deltas)
        weights, server_state = self.step(state, deltas, samples)
        if not all_finite(weights) or not all(all_finite(arrays) for arrays in server_state.values()):
            return without_version(
                "the aggregate is not finite (huge updates with max_update_norm disabled?)"
            )
        new_state = GlobalState(
            version=state.version + 1,
            weights=weights,
            server_state=server_state,
            created_at=now or datetime.now(UTC),
            parent_version=state.version,
        )
        return AggregationResult(
            state.version, new_state, tuple(accepted), tuple(refused), summary, contributions=contributions
        )

    def _within_budget(
        self, usable: list[tuple[PreparedUpdate, int]], refused: list[RefusedUpdate], ledger: Ledger | None
    ) -> tuple[list[tuple[PreparedUpdate, int]], dict[str, Contributions]]:
        """Central DP: what each device would release in this aggregation; the updates of a device whose
        budget that would pass are moved to ``refused``."""
        privacy = self.config.privacy
        per_device: dict[str, int] = {}
        for item, _ in usable:
            per_device[item.update.device_id] = per_device.get(item.update.device_id, 0) + 1
        contributions: dict[str, Contributions] = {}
        over: dict[str, str] = {}
        for device_id, count in per_device.items():
            # k updates in one noised sum: one release at z / k; noised one by one: k releases at z.
            if self.sample_weighted:
                released = {privacy.noise_multiplier / count: 1}
            else:
                released = {privacy.noise_multiplier: count}
            reason = None if ledger is None else ledger.refusal(device_id, released, privacy.epsilon_budget)
            if reason is None:
                contributions[device_id] = released
            else:
                over[device_id] = reason
        for item, _ in usable:
            if item.update.device_id in over:
                refused.append(RefusedUpdate.of(item.update, over[item.update.device_id]))
        return [(item, s) for item, s in usable if item.update.device_id not in over], contributions

    def _central_noise(self, deltas: Deltas) -> Deltas:
        """The clipped deltas with central DP's Gaussian noise (see the module's docstring)."""
        privacy = self.config.privacy
        std = privacy.noise_multiplier * privacy.clip_norm
        if not self.sample_weighted:
            noised = []
            for delta in deltas:
                noise = gaussian_noise(delta, std, self.rng)
                noised.append({name: a + noise[name] for name, a in delta.items()})
            return noised
        # The sum's noise, shared out equally: the uniform mean of the deltas then carries it / n.
        noise = gaussian_noise(deltas[0], std, self.rng)
        return [{name: a + noise[name] / len(deltas) for name, a in delta.items()} for delta in deltas]

    @abstractmethod
    def step(self, state: GlobalState, deltas: Deltas, samples: list[int]) -> tuple[Weights, ServerState]:
        """The new weights (float64) and server optimiser state from the effective deltas."""


class FedAvg(Strategy):
    name = "fedavg"

    def step(self, state: GlobalState, deltas: Deltas, samples: list[int]) -> tuple[Weights, ServerState]:
        lr = self.server_lr
        total = sum(samples)
        weights = {}
        for name, current in state.weights.items():
            base = current.astype(np.float64)
            # Averaging the implied models (not the deltas) keeps fresh full-weight updates bit-exact.
            average = sum(n * (base + delta[name]) for n, delta in zip(samples, deltas, strict=True)) / total
            weights[name] = (1.0 - lr) * base + lr * average
        return weights, {}


class FedAvgM(Strategy):
    name = "fedavgm"

    def step(self, state: GlobalState, deltas: Deltas, samples: list[int]) -> tuple[Weights, ServerState]:
        weights, velocity = {}, {}
        for name, current in state.weights.items():
            previous = previous_server_array(state, "momentum", name, fill=0.0)
            velocity[name] = self.config.momentum * previous + sample_mean(deltas, samples, name)
            weights[name] = current.astype(np.float64) + self.server_lr * velocity[name]
        return weights, {"momentum": velocity}


class FedAdam(Strategy):
    name = "fedadam"

    def step(self, state: GlobalState, deltas: Deltas, samples: list[int]) -> tuple[Weights, ServerState]:
        beta1, beta2 = self.config.betas
        tau = self.config.tau
        weights, first, second = {}, {}, {}
        for name, current in state.weights.items():
            mean_delta = sample_mean(deltas, samples, name)
            first[name] = (
                beta1 * previous_server_array(state, "adam_m", name, fill=0.0) + (1 - beta1) * mean_delta
            )
            second[name] = (
                beta2 * previous_server_array(state, "adam_v", name, fill=tau**2)
                + (1 - beta2) * mean_delta**2
            )
            step = self.server_lr * first[name] / (np.sqrt(second[name]) + tau)
            weights[name] = current.astype(np.float64) + step
        return weights, {"adam_m": first, "adam_v": second}


class CoordinateMedian(Strategy):
    name = "median"
    sample_weighted = False

    def step(self, state: GlobalState, deltas: Deltas, samples: list[int]) -> tuple[Weights, ServerState]:
        weights = {}
        for name, current in state.weights.items():
            median = np.median(np.stack([delta[name] for delta in deltas]), axis=0)
            weights[name] = current.astype(np.float64) + self.server_lr * median
        return weights, {}


class TrimmedMean(Strategy):
    name = "trimmed_mean"
    sample_weighted = False

    def step(self, state: GlobalState, deltas: Deltas, samples: list[int]) -> tuple[Weights, ServerState]:
        n = len(deltas)
        # The epsilon makes 0.29 * 100 trim 29, not 28; at least one value always remains.
        trim = min(math.floor(self.config.trim_fraction * n + 1e-9), (n - 1) // 2)
        weights = {}
        for name, current in state.weights.items():
            ordered = np.sort(np.stack([delta[name] for delta in deltas]), axis=0)
            trimmed = ordered[trim : n - trim].mean(axis=0)
            weights[name] = current.astype(np.float64) + self.server_lr * trimmed
        return weights, {}


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedAvg, FedAvgM, FedAdam, CoordinateMedian, TrimmedMean)
}


def make_strategy(
    config: AggregationConfig | None = None, *, rng: np.random.Generator | None = None
) -> Strategy:
    config = config or AggregationConfig()
    return STRATEGIES[config.strategy](config, rng=rng)


def sample_mean(deltas: Deltas, samples: list[int], name: str) -> np.ndarray:
    return sum(n * delta[name] for n, delta in zip(samples, deltas, strict=True)) / sum(samples)


def previous_server_array(state: GlobalState, kind: str, name: str, *, fill: float) -> np.ndarray:
    """The optimiser's array from the previous version, or a fresh one (first step, or a strategy or
    model shape change)."""
    shape = state.weights[name].shape
    previous = state.server_state.get(kind, {}).get(name)
    if previous is None or previous.shape != shape:
        return np.full(shape, fill, dtype=np.float64)
    return previous.astype(np.float64)


def summarise(
    usable: Sequence[tuple[PreparedUpdate, int]], accepted: Sequence[AcceptedUpdate], *, n_refused: int
) -> AggregationSummary:
    losses = [
        (float(item.update.metrics["loss"]), int(item.update.n_samples))
        for item, _ in usable
        if "loss" in item.update.metrics
    ]
    loss_samples = sum(n for _, n in losses)
    return AggregationSummary(
        n_updates=len(accepted),
        n_devices=len({entry.device_id for entry in accepted}),
        total_samples=sum(entry.n_samples for entry in accepted),
        mean_staleness=(sum(entry.staleness for entry in accepted) / len(accepted)) if accepted else None,
        mean_loss=(sum(loss * n for loss, n in losses) / loss_samples) if losses else None,
        n_clipped=sum(entry.clipped for entry in accepted),
        n_refused=n_refused,
    )
