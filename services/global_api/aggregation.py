"""Turns the pending updates into the next global version, safely under concurrency.

Any number of aggregations may run at once, in threads of one API or in several replicas. Each one:

1. reads the latest version ``v`` and brings its consumed updates' status, and under central DP its
   contributors' privacy ledger, in step (idempotent; this completes an aggregation that stopped
   between steps 3 and 5);
2. reads the pending updates and runs the configured strategy over them;
3. when that makes a version, inserts it as document ``_id = v + 1`` listing the consumed updates and
   its ``privacy`` (the worst epsilon its weights carry; under central DP what each device released);
4. the unique ``_id`` lets exactly one aggregation win ``v + 1``; a loser starts again from 1 and
   finds the updates the winner took gone;
5. the winner charges the central-DP contributions to the ledger (keyed by the version), marks its
   updates ``aggregated`` (with the version) and the unusable ones ``refused``, then deletes the arrays
   no pending update needs any more (`UpdateStore.release`).

An aggregation that created ``v + 1`` had read ``v`` and, before reading the pending updates,
marked everything ``v`` consumed (and by induction every earlier version's updates were marked
before ``v`` was made), so no update is counted in two versions, and every accepted update stays
pending until a version consumes it or it is refused with a reason. This needs no multi-document
transaction, so it also runs on a standalone MongoDB.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from flead.federated import AggregationConfig, AggregationResult, make_strategy
from services.global_api.privacy_store import (
    PrivacyStore,
    stored_contributions,
    version_privacy,
    version_source,
)
from services.global_api.registry import ModelRegistry, ModelVersion, VersionConflict
from services.global_api.runtime_config import RuntimeConfigStore
from services.global_api.update_store import UpdateStore, update_key

MAX_ATTEMPTS = 50


class AggregationBusy(RuntimeError):
    """Concurrent aggregations kept winning every version this one tried to create."""


@dataclass(frozen=True)
class AggregationOutcome:
    created: bool
    version: int  # the new version, or the current one when none was made
    parent_version: int | None = None
    reason: str | None = None  # why no version was made
    n_updates: int = 0
    n_devices: int = 0
    refused: tuple[dict, ...] = field(default_factory=tuple)
    attempts: int = 1

    def to_dict(self) -> dict:
        return {
            "created": self.created,
            "version": self.version,
            "parent_version": self.parent_version,
            "reason": self.reason,
            "n_updates": self.n_updates,
            "n_devices": self.n_devices,
            "refused": list(self.refused),
            "attempts": self.attempts,
        }


class Aggregator:
    def __init__(
        self,
        registry: ModelRegistry,
        updates: UpdateStore,
        config: RuntimeConfigStore,
        privacy: PrivacyStore,
    ) -> None:
        self._registry = registry
        self._updates = updates
        self._config = config
        self._privacy = privacy
        self._marked: int | None = None  # a version whose consumed updates this process has marked

    def repair(self) -> ModelVersion:
        """Step 1: mark what the latest version consumed and charge what it released; returns it."""
        latest = self._registry.latest()
        if latest.version != self._marked:  # both are idempotent: done once is enough
            self._charge(latest.version, stored_contributions(latest.privacy))
            self._updates.mark_aggregated(latest.update_keys, latest.version)
            self._marked = latest.version
        return latest

    def _charge(self, version: int, contributions: dict) -> None:
        """Central DP: charge each device what it released in ``version`` (the budget was checked)."""
        if not contributions:
            return
        privacy = self._config.load().privacy
        source = version_source(version)
        for device_id, released in contributions.items():
            self._privacy.charge(device_id, [(source, released)], privacy=privacy, enforce_budget=False)

    def aggregate(self, *, trigger: str = "manual") -> AggregationOutcome:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            latest = self.repair()
            read = self._updates.pending()
            pending = read.updates
            if not pending:
                self._updates.release()  # e.g. those just refused for their missing arrays
                return AggregationOutcome(
                    False, latest.version, reason="no pending updates", attempts=attempt
                )
            config = self._config.load()
            aggregation = config.aggregation()
            state = self._registry.state(latest.version)
            older_bases = {
                u.base_version
                for u in pending
                if u.kind == "weights" and latest.version - aggregation.max_staleness <= u.base_version
            }
            privacy = aggregation.privacy
            contributors = {u.device_id for u in pending} if privacy.enabled else set()
            ledger = self._privacy.snapshot(contributors, privacy.delta)
            result = make_strategy(aggregation).aggregate(
                state,
                pending,
                history=self._registry.weights_history(older_bases - {latest.version}),
                now=datetime.now(UTC),
                ledger=ledger if aggregation.privacy.mode == "central" else None,
            )
            refusals = [(update_key(r.device_id, r.update_id), r.reason) for r in result.refused]
            refused = tuple(
                {"device_id": r.device_id, "update_id": r.update_id, "reason": r.reason}
                for r in result.refused
            )
            if not result.created:
                self._updates.mark_refused(refusals, at_version=latest.version)
                self._updates.release(read.sealed_groups)
                return AggregationOutcome(
                    False, latest.version, reason=result.skipped_reason, refused=refused, attempts=attempt
                )
            keys = [update_key(a.device_id, a.update_id) for a in result.accepted]
            try:
                created = self._registry.insert_aggregate(
                    result,
                    architecture=latest.model_config(),
                    strategy=aggregation.strategy,
                    trigger=trigger,
                    client=config.client(),
                    update_keys=keys,
                    metrics=version_metrics(result, pending),
                    privacy=privacy_of(result, aggregation, latest, ledger),
                )
            except VersionConflict:
                continue
            self._charge(created.version, result.contributions)
            self._updates.mark_aggregated(keys, created.version, sealed_groups=read.sealed_groups)
            self._marked = created.version
            self._updates.mark_refused(refusals, at_version=created.version)
            self._updates.release(read.sealed_groups)
            return AggregationOutcome(
                True,
                created.version,
                parent_version=latest.version,
                n_updates=created.n_updates,
                n_devices=created.n_devices,
                refused=refused,
                attempts=attempt,
            )
        raise AggregationBusy(f"gave up after {MAX_ATTEMPTS} conflicting concurrent aggregations")


def privacy_of(
    result: AggregationResult, aggregation: AggregationConfig, parent: ModelVersion, ledger
) -> dict:
    """The new version's ``privacy`` block: its contributors' epsilons from the ledger read before the
    aggregation (local DP: their updates were charged when accepted; central DP: plus what they release
    in this version)."""
    contributors = {a.device_id for a in result.accepted}
    epsilons = {d: ledger.epsilon(d, result.contributions.get(d)) for d in contributors}
    return version_privacy(
        aggregation.privacy,
        parent=parent.privacy,
        parent_version=parent.version,
        epsilons=epsilons,
        contributions=result.contributions,
    )


def version_metrics(result: AggregationResult, updates: list) -> dict:
    """The summary of an aggregation plus the sample-weighted mean of every metric the accepted
    updates reported (e.g. ``loss``)."""
    summary = result.summary
    metrics: dict[str, float | int | None] = {
        "mean_loss": summary.mean_loss,
        "mean_staleness": summary.mean_staleness,
        "n_clipped": summary.n_clipped,
        "n_refused": summary.n_refused,
    }
    accepted = {(a.device_id, a.update_id) for a in result.accepted}
    sums: dict[str, float] = defaultdict(float)
    weights: dict[str, int] = defaultdict(int)
    for update in updates:
        if update.key not in accepted:
            continue
        for name, value in update.metrics.items():
            sums[name] += float(value) * update.n_samples
            weights[name] += update.n_samples
    for name in sorted(sums):
        mean = sums[name] / weights[name]
        metrics[f"mean_{name}"] = mean if math.isfinite(mean) else None
    return metrics
