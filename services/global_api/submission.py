"""Accepting one local update: idempotency, validation against the current model, persistence, and
the automatic aggregation once enough updates are pending."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from flead.federated import LocalUpdate, SubmitStatus, UpdateRefused, prepare_update
from services.global_api.aggregation import AggregationBusy, AggregationOutcome, Aggregator
from services.global_api.registry import LATEST_MAX_AGE_S, ModelRegistry
from services.global_api.runtime_config import CONFIG_MAX_AGE_S, RuntimeConfigStore
from services.global_api.update_store import UpdateStore, update_key


@dataclass(frozen=True)
class SubmitOutcome:
    status: SubmitStatus
    pending: int
    version: int  # the latest global version after this submission
    aggregation: AggregationOutcome | None = None  # the automatic aggregation it triggered

    def to_dict(self) -> dict:
        body: dict = {"status": str(self.status), "pending": self.pending, "version": self.version}
        if self.aggregation is not None:
            body["aggregation"] = self.aggregation.to_dict()
        return body


@dataclass(frozen=True)
class ItemOutcome:
    status: SubmitStatus
    reason: str | None = None


@dataclass(frozen=True)
class BatchOutcome:
    items: list[ItemOutcome]  # in the order of the updates submitted
    pending: int
    version: int
    aggregation: AggregationOutcome | None = None


class Submissions:
    def __init__(
        self,
        registry: ModelRegistry,
        updates: UpdateStore,
        config: RuntimeConfigStore,
        aggregator: Aggregator,
    ) -> None:
        self._registry = registry
        self._updates = updates
        self._config = config
        self._aggregator = aggregator
        self._auto_lock = threading.Lock()

    def submit(self, update: LocalUpdate, *, submitted_by: str) -> SubmitOutcome:
        """Store ``update`` as pending, or report it as a duplicate; raises
        ``flead.federated.UpdateRefused`` (with the reason) when it does not fit the current model."""
        config = self._config.load(max_age_s=CONFIG_MAX_AGE_S)
        aggregation = config.aggregation()
        latest = self._registry.latest_version(max_age_s=LATEST_MAX_AGE_S)
        if update.base_version > latest:  # the device saw a version newer than this process remembers
            latest = self._registry.latest_version()
        history = None
        if update.kind == "weights" and update.base_version != latest:
            history = self._registry.weights_history([int(update.base_version)])
        try:
            prepared = prepare_update(update, self._registry.state(latest), aggregation, history)
        except UpdateRefused:
            # A resubmission of an update received earlier (when it still fitted) is a duplicate.
            if self._updates.exists(update.device_id, update.update_id):
                return self._duplicate()
            raise
        if not self._updates.insert_pending(update, norm=prepared.norm, submitted_by=submitted_by):
            return self._duplicate()
        pending = self._updates.pending_count()
        if pending < config.auto_aggregate_threshold:
            return SubmitOutcome(SubmitStatus.ACCEPTED, pending, latest)
        outcome = self._aggregate_at_threshold(config.auto_aggregate_threshold)
        if outcome is not None:
            latest = outcome.version
        return SubmitOutcome(SubmitStatus.ACCEPTED, self._updates.pending_count(), latest, outcome)

    def submit_many(self, updates: list[LocalUpdate], *, submitted_by: str) -> BatchOutcome:
        """`submit` for many updates at once: each one accepted, a duplicate, or refused with its reason;
        the accepted ones stored in two bulk writes, then the automatic aggregation if due (once)."""
        config = self._config.load(max_age_s=CONFIG_MAX_AGE_S)
        aggregation = config.aggregation()
        latest = self._registry.latest_version(max_age_s=LATEST_MAX_AGE_S)
        if updates and max(int(u.base_version) for u in updates) > latest:
            latest = self._registry.latest_version()
        state = self._registry.state(latest)
        history = self._registry.weights_history(
            {int(u.base_version) for u in updates if u.kind == "weights" and u.base_version != latest}
        )
        keys = [update_key(u.device_id, u.update_id) for u in updates]
        outcomes: list[ItemOutcome | None] = [None] * len(updates)
        valid: list[tuple[int, LocalUpdate, float]] = []
        refused: dict[int, str] = {}
        seen: set[str] = set()
        for index, (key, update) in enumerate(zip(keys, updates, strict=True)):
            if key in seen:  # the same update twice in one batch: counted once
                outcomes[index] = ItemOutcome(SubmitStatus.DUPLICATE)
                continue
            seen.add(key)
            try:
                prepared = prepare_update(update, state, aggregation, history)
            except UpdateRefused as exc:
                refused[index] = exc.reason
                continue
            valid.append((index, update, prepared.norm))
        # As in `submit`: a resubmission of an update received earlier (when it still fitted) is a duplicate.
        known = self._updates.existing(keys[index] for index in refused)
        for index, reason in refused.items():
            if keys[index] in known:
                outcomes[index] = ItemOutcome(SubmitStatus.DUPLICATE)
            else:
                outcomes[index] = ItemOutcome(SubmitStatus.REFUSED, reason)
        stored = self._updates.insert_pending_many(
            [(update, norm) for _, update, norm in valid], submitted_by=submitted_by
        )
        for index, _, _ in valid:
            new = keys[index] in stored
            outcomes[index] = ItemOutcome(SubmitStatus.ACCEPTED if new else SubmitStatus.DUPLICATE)
        pending = self._updates.pending_count()
        outcome = None
        if stored and pending >= config.auto_aggregate_threshold:
            outcome = self._aggregate_at_threshold(config.auto_aggregate_threshold)
            if outcome is not None:
                latest = outcome.version
            pending = self._updates.pending_count()
        return BatchOutcome([o for o in outcomes if o is not None], pending, latest, outcome)

    def _aggregate_at_threshold(self, threshold: int) -> AggregationOutcome | None:
        """Aggregate if at least ``threshold`` updates are still pending; the version made, if any.

        One thread of this process aggregates at a time: a submission that finds one at work waits for
        it, then finds its update consumed (nothing to do) or still pending with others that arrived
        meanwhile (one more aggregation). An aggregation takes every pending update, so one round per
        submission drains the buffer, and no submission's latency grows with the ones that follow it
        (when the holder went on aggregating for everyone who arrived, a steady stream of batches kept
        one request waiting for tens of seconds).
        """
        with self._auto_lock:
            if self._updates.pending_count() < threshold:
                return None
            try:
                return self._aggregator.aggregate(trigger="auto")
            except AggregationBusy:  # other replicas are aggregating these updates
                return None

    def _duplicate(self) -> SubmitOutcome:
        return SubmitOutcome(
            SubmitStatus.DUPLICATE, self._updates.pending_count(), self._registry.latest_version()
        )
