"""How devices federate: push local updates, learn about newer global versions (`ModelExchange`).

Two implementations: `InProcessExchange` (the default and the tests': a `flead.federated.UpdateBuffer`
inside the trainer process, aggregating at ``settings.auto_aggregate_threshold`` pending updates) and
`exchange_http.HttpExchange` (the global model API). Both are called from the consume loop and must
return quickly; the HTTP one does its network work in a background thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from typing import Protocol

from flead.config import Settings
from flead.federated import (
    AggregationConfig,
    ClientConfig,
    GlobalState,
    LocalUpdate,
    SubmitStatus,
    UpdateBuffer,
)
from flead.model.anomaly_model import AnomalyModel
from flead.model.config import ModelConfig
from flead.privacy.accountant import BUDGET_EXHAUSTED

log = logging.getLogger(__name__)


class ModelExchange(Protocol):
    lineage: str  # names the sequence of versions: a version number means something only within it
    model_config: ModelConfig  # the global model's architecture: what new devices are built with
    client_config: ClientConfig  # proximal_mu and personal_mix served with the latest version

    def push(self, update: LocalUpdate) -> None:
        """Hand over a device's update; never blocks for long."""

    def latest(self, known_version: int | None) -> GlobalState | None:
        """The newest global state if it is newer than `known_version` (any, when None), else None."""

    def unsent(self) -> list[LocalUpdate]:
        """Updates handed over but not yet delivered (checkpointed with their devices)."""

    def flush(self, timeout_s: float) -> bool:
        """Try to deliver what is waiting within `timeout_s`; True when nothing waits."""

    def over_budget(self, device_id: str) -> bool:
        """Whether the server refused one of the device's updates for its privacy budget."""

    def stats(self) -> dict[str, int | float | None]: ...

    def close(self) -> None: ...


class BudgetRefusals:
    """The devices the server refused for their privacy budget (thread-safe: the HTTP exchange adds
    from its delivery thread). Kept for the process's life, so a device restored here after a
    rebalance is marked at its next chunk too; elsewhere it is refused once more, then marked."""

    def __init__(self) -> None:
        self._devices: set[str] = set()
        self._lock = threading.Lock()
        self.refused = 0  # updates refused for the budget

    def note(self, device_id: str, reason: str | None) -> bool:
        """Count the refusal if it is the budget's; True when it is."""
        if not (reason or "").startswith(BUDGET_EXHAUSTED):
            return False
        with self._lock:
            self.refused += 1
            new = device_id not in self._devices
            self._devices.add(device_id)
        if new:
            log.warning("device %s: %s", device_id, reason)
        return True

    def __contains__(self, device_id: str) -> bool:
        with self._lock:
            return device_id in self._devices

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"budget_refused": self.refused, "devices_over_budget": len(self._devices)}


class InProcessExchange:
    """A FedBuff buffer in the trainer process; its state is saved with the checkpoints (see
    `checkpoints.CheckpointStore.save_global`), so a restarted trainer continues the same lineage.

    Every trainer process has its own buffer: with several processes, use the HTTP exchange for one
    federation across all devices.
    """

    def __init__(
        self,
        settings: Settings,
        model_config: ModelConfig,
        *,
        seed: int = 0,
        initial: GlobalState | None = None,
        client_config: ClientConfig | None = None,
    ) -> None:
        if initial is None:
            initial = GlobalState.initial(AnomalyModel(model_config, seed).get_weights())
        aggregation = AggregationConfig(
            strategy=settings.aggregation_strategy,
            max_staleness=settings.max_staleness,
            privacy=settings.privacy(),
        )
        self.buffer = UpdateBuffer(initial, aggregation)
        self.budget = BudgetRefusals()
        self.model_config = model_config
        self.client_config = client_config or ClientConfig()
        self.lineage = f"local:{settings.consumer_group}:{architecture_digest(model_config)}"
        self._threshold = settings.auto_aggregate_threshold
        self._counts = dict.fromkeys(
            ("pushed", "accepted", "duplicate", "refused", "refused_at_aggregation", "aggregations"), 0
        )

    def push(self, update: LocalUpdate) -> None:
        self._counts["pushed"] += 1
        result = self.buffer.submit(update)
        self._counts[result.status.value] += 1
        if result.status is SubmitStatus.REFUSED and not self.budget.note(update.device_id, result.reason):
            log.info("update %s of %s refused: %s", update.update_id, update.device_id, result.reason)
        aggregated = self.buffer.aggregate_if_ready(self._threshold)
        if aggregated is None:
            return
        for refusal in aggregated.refused:  # accepted when submitted (e.g. central DP's budget)
            self._counts["refused_at_aggregation"] += 1
            if not self.budget.note(str(refusal.device_id), refusal.reason):
                log.info("update %s of %s refused: %s", refusal.update_id, refusal.device_id, refusal.reason)
        if aggregated.new_state is not None:
            self._counts["aggregations"] += 1

    def latest(self, known_version: int | None) -> GlobalState | None:
        state = self.buffer.state
        return state if known_version is None or state.version > known_version else None

    def unsent(self) -> list[LocalUpdate]:
        return []

    def flush(self, timeout_s: float) -> bool:
        return True

    def over_budget(self, device_id: str) -> bool:
        return device_id in self.budget

    def stats(self) -> dict[str, int | float | None]:
        return {
            "global_version": self.buffer.version,
            "pending_updates": len(self.buffer),
            **self._counts,
            **self.budget.stats(),
        }

    def close(self) -> None:
        pass


def architecture_digest(model: ModelConfig) -> str:
    """A short name for an architecture: versions of different architectures never mix."""
    return hashlib.sha256(json.dumps(model.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
