"""Accepting one local update: idempotency, validation against the current model, persistence, and
the automatic aggregation once enough updates are pending.

A single submission that reaches the threshold aggregates before it answers (and reports the outcome).
A batch wakes this process's background aggregation instead and answers at once: a batch's latency
then holds its own writes only, not an aggregation of everything pending. The background thread
aggregates while the threshold is reached (each round takes every pending update), so it drains the
buffer; the updates it has not consumed yet stay pending in the database, so a process that stops
meanwhile loses none (the next submission at the threshold, in any replica, aggregates them). A batch
decides on a pending count at most ``PENDING_MAX_AGE_S`` old (this process's own writes counted at
once), so one that reaches the threshold with another replica's updates of the last second may leave
the aggregation to the next submission.

Under local differential privacy a new update is charged to its device's privacy ledger (one release at
its declared noise multiplier, keyed by the update) just before it is stored, and refused with the
reason when that would pass the device's epsilon budget; a resubmission is recognised first and charges
nothing (see ``privacy_store``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from flead.federated import LocalUpdate, SubmitStatus, UpdateRefused, prepare_update
from flead.privacy.config import PrivacyConfig
from services.global_api.aggregation import AggregationBusy, AggregationOutcome, Aggregator
from services.global_api.privacy_store import PrivacyStore, update_source
from services.global_api.registry import LATEST_MAX_AGE_S, ModelRegistry
from services.global_api.runtime_config import CONFIG_MAX_AGE_S, RuntimeConfigStore
from services.global_api.update_store import UpdateStore, update_key

log = logging.getLogger(__name__)
RETRY_AFTER_ERROR_S = 1.0
# How old the pending count a batch reports (and decides on) may be: counting reads every pending status
# on the embedded server. This process's own writes are counted at once (`UpdateStore.pending_count`).
PENDING_MAX_AGE_S = 1.0
STOP_TIMEOUT_S = 30.0


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
    aggregation_scheduled: bool = False  # the threshold was reached: the background aggregation woken


class Submissions:
    def __init__(
        self,
        registry: ModelRegistry,
        updates: UpdateStore,
        config: RuntimeConfigStore,
        aggregator: Aggregator,
        privacy: PrivacyStore,
    ) -> None:
        self._registry = registry
        self._updates = updates
        self._config = config
        self._aggregator = aggregator
        self._privacy = privacy
        self._auto_lock = threading.Lock()
        self._background = BackgroundAggregation(self._aggregate_while_due)
        # Told of every aggregation the background thread makes (e.g. to count it in the API's metrics).
        self.on_background_aggregation: Callable[[AggregationOutcome], None] = lambda outcome: None

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
        if aggregation.privacy.mode == "local":
            if self._updates.exists(update.device_id, update.update_id):
                return self._duplicate()
            refused = self._charge_local(update.device_id, [update], aggregation.privacy)
            if refused:
                raise UpdateRefused(refused[0])
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
        the accepted ones stored in bulk writes, then the background aggregation woken if due."""
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
        if aggregation.privacy.mode == "local":
            valid = self._charge_local_many(valid, keys, outcomes, aggregation.privacy)
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
        pending = self._updates.pending_count(max_age_s=PENDING_MAX_AGE_S)
        scheduled = bool(stored) and pending >= config.auto_aggregate_threshold
        if scheduled:
            self._background.wake()
        return BatchOutcome([o for o in outcomes if o is not None], pending, latest, scheduled)

    def _charge_local(self, device_id: str, updates: list[LocalUpdate], privacy: PrivacyConfig) -> list[str]:
        """Charge the device one release per update at its declared multiplier, in order; the budget
        refusal of each update that would pass the budget, in order (the others are charged)."""
        charges = [(local_source(u), {float(u.privacy["noise_multiplier"]): 1}) for u in updates]
        outcome = self._privacy.charge(device_id, charges, privacy=privacy)
        return [outcome.refused[source] for source, _ in charges if source in outcome.refused]

    def _charge_local_many(
        self,
        valid: list[tuple[int, LocalUpdate, float]],
        keys: list[str],
        outcomes: list[ItemOutcome | None],
        privacy: PrivacyConfig,
    ) -> list[tuple[int, LocalUpdate, float]]:
        """`_charge_local` for a batch's valid updates: those stored before are duplicates, those over
        their device's budget refused (both written to ``outcomes``); the ones charged are returned."""
        known = self._updates.existing(keys[index] for index, _, _ in valid)
        by_device: dict[str, list[tuple[int, LocalUpdate, float]]] = {}
        for item in valid:
            index, update, _ = item
            if keys[index] in known:
                outcomes[index] = ItemOutcome(SubmitStatus.DUPLICATE)
            else:
                by_device.setdefault(update.device_id, []).append(item)
        charged = []
        for device_id, items in by_device.items():
            charges = [(local_source(u), {float(u.privacy["noise_multiplier"]): 1}) for _, u, _ in items]
            outcome = self._privacy.charge(device_id, charges, privacy=privacy)
            for (source, _), item in zip(charges, items, strict=True):
                if source in outcome.refused:
                    outcomes[item[0]] = ItemOutcome(SubmitStatus.REFUSED, outcome.refused[source])
                else:
                    charged.append(item)
        return sorted(charged, key=lambda item: item[0])

    def close(self) -> None:
        """Stop the background aggregation (after the round it is in, if any)."""
        self._background.stop(STOP_TIMEOUT_S)

    def _aggregate_while_due(self) -> None:
        while True:
            threshold = self._config.load(max_age_s=CONFIG_MAX_AGE_S).auto_aggregate_threshold
            outcome = self._aggregate_at_threshold(threshold)
            if outcome is None:
                return
            self.on_background_aggregation(outcome)
            if not outcome.created:  # nothing usable pending: wait for the next submission
                return

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


def local_source(update: LocalUpdate) -> str:
    """The ledger key of a local-DP update's charge."""
    return update_source(update_key(update.device_id, update.update_id))


class BackgroundAggregation:
    """One daemon thread that calls ``run`` after each `wake` (wakes while it runs make one more call)."""

    def __init__(self, run: Callable[[], None]) -> None:
        self._run = run
        self._woken = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def wake(self) -> None:
        with self._lock:
            if self._stopped.is_set():
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="flead-auto-aggregation", daemon=True)
                self._thread.start()
        self._woken.set()

    def stop(self, timeout_s: float) -> None:
        with self._lock:
            self._stopped.set()
            thread = self._thread
        self._woken.set()
        if thread is not None:
            thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            self._woken.wait()
            if self._stopped.is_set():
                return
            self._woken.clear()
            try:
                self._run()
            except Exception:  # e.g. MongoDB unreachable: the updates stay pending; retried
                log.exception("background aggregation failed; retrying in %.0f s", RETRY_AFTER_ERROR_S)
                self._stopped.wait(RETRY_AFTER_ERROR_S)
                self._woken.set()
