"""Buffered, semi-asynchronous aggregation (FedBuff, Nguyen et al. 2022).

Devices stream forever and never finish a round. Each update is validated when it is submitted and
waits in the buffer; an aggregation turns everything pending into the next version (version + 1) and
empties the buffer. Updates carry the version they were trained from, so the ones that arrive after
newer versions were made are discounted for their staleness, or refused past ``max_staleness``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import numpy as np

from flead.federated.config import AggregationConfig
from flead.federated.result import AggregationResult
from flead.federated.state import GlobalState
from flead.federated.strategies import make_strategy
from flead.federated.update import LocalUpdate
from flead.federated.validation import PreparedUpdate, UpdateRefused, check_identity, prepare_update
from flead.privacy.accountant import PrivacyLedger, budget_refusal


class SubmitStatus(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # already submitted: ignored, counted once
    REFUSED = "refused"


@dataclass(frozen=True)
class SubmitResult:
    status: SubmitStatus
    reason: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status is SubmitStatus.ACCEPTED


class UpdateBuffer:
    """Holds the current global state and the updates waiting for the next aggregation.

    Submissions are idempotent on ``(device_id, update_id)``: a repeat is reported as a duplicate and
    ignored, whether the original is still pending or already aggregated. Update ids are remembered as
    long as the update could still be accepted (``max_staleness`` versions past its base), so memory
    stays bounded while devices stream forever. The buffer also keeps the weights of the last
    ``max_staleness + 1`` versions, to turn full-weight updates on an older base into deltas.

    State lives in memory: a service that must survive restarts persists the versions and rebuilds the
    buffer with ``UpdateBuffer(latest_state, config, history=...)``. Methods are thread-safe.

    With differential privacy on, ``ledger`` holds every device's privacy spent: a local-DP update is
    charged when it is accepted (the server has seen it), a central-DP aggregate when it is made; and
    ``epsilons`` maps each version to the largest epsilon of any device that contributed to it or to
    an earlier version (its weights carry all of them).
    """

    def __init__(
        self,
        state: GlobalState,
        config: AggregationConfig | None = None,
        *,
        history: Mapping[int, Mapping[str, np.ndarray]] | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self._strategy = make_strategy(config, rng=rng)
        self.ledger = PrivacyLedger(self._strategy.config.privacy.delta)
        self.epsilons: dict[int, float] = {state.version: 0.0}
        self._state = state
        self._history = {int(version): weights for version, weights in (history or {}).items()}
        self._history[state.version] = state.weights
        self._pending: dict[tuple[str, str], PreparedUpdate] = {}
        self._seen: dict[tuple[str, str], int] = {}  # key -> base_version
        self._lock = threading.RLock()
        self._forget_old()

    @property
    def state(self) -> GlobalState:
        return self._state

    @property
    def version(self) -> int:
        return self._state.version

    @property
    def config(self) -> AggregationConfig:
        return self._strategy.config

    def __len__(self) -> int:
        return len(self._pending)

    def pending(self) -> tuple[LocalUpdate, ...]:
        """The accepted updates waiting for the next aggregation, in submission order."""
        with self._lock:
            return tuple(item.update for item in self._pending.values())

    def submit(self, update: LocalUpdate) -> SubmitResult:
        with self._lock:
            try:
                check_identity(update)
                if update.key in self._seen:
                    return SubmitResult(
                        SubmitStatus.DUPLICATE, "this (device_id, update_id) was already submitted"
                    )
                prepared = prepare_update(update, self._state, self.config, self._history)
                self._charge_local(update)
            except UpdateRefused as refusal:
                return SubmitResult(SubmitStatus.REFUSED, refusal.reason)
            self._pending[update.key] = prepared
            self._seen[update.key] = int(update.base_version)
            return SubmitResult(SubmitStatus.ACCEPTED)

    def aggregate(self, *, now: datetime | None = None) -> AggregationResult:
        """Aggregate everything pending into the next version. When no version is made (nothing
        pending, fewer than ``min_updates``), the valid updates stay pending."""
        with self._lock:
            result = self._strategy.combine(
                self._state, list(self._pending.values()), now=now, ledger=self.ledger
            )
            for refusal in result.refused:
                self._pending.pop((refusal.device_id, refusal.update_id), None)
            if result.new_state is not None:
                for device_id, released in result.contributions.items():
                    self.ledger.charge(device_id, released)
                contributors = {a.device_id for a in result.accepted}
                self.epsilons[result.new_state.version] = max(
                    self.epsilons.get(self._state.version, 0.0), self.ledger.max_epsilon(contributors)
                )
                self._pending.clear()
                self._state = result.new_state
                self._history[self._state.version] = self._state.weights
                self._forget_old()
            return result

    def aggregate_if_ready(
        self, threshold: int | None = None, *, now: datetime | None = None
    ) -> AggregationResult | None:
        """Aggregate once at least ``threshold`` updates are pending (FedBuff's buffer size K; default
        ``min_updates``), else do nothing and return None."""
        with self._lock:
            if len(self._pending) < (threshold if threshold is not None else self.config.min_updates):
                return None
            return self.aggregate(now=now)

    def _charge_local(self, update: LocalUpdate) -> None:
        """Local DP: charge the device for the noised update it sent, or refuse it over the budget."""
        privacy = self.config.privacy
        if privacy.mode != "local":
            return
        released = {float(update.privacy["noise_multiplier"]): 1}
        reason = budget_refusal(
            self.ledger.epsilon(update.device_id),
            self.ledger.epsilon(update.device_id, released),
            privacy.epsilon_budget,
            privacy.delta,
        )
        if reason is not None:
            raise UpdateRefused(reason)
        self.ledger.charge(update.device_id, released)

    def _forget_old(self) -> None:
        oldest_usable = self._state.version - self.config.max_staleness
        self._history = {v: w for v, w in self._history.items() if v >= oldest_usable}
        self._seen = {key: base for key, base in self._seen.items() if base >= oldest_usable}
