"""One device's keyed state in the trainer: its federated client (detector), waiting readings, stats.

Readings are scored in whole chunks of the detector's ``TrainConfig.batch_size``: the detector then
gives bit-identical results however the stream was cut into polls, restarts and rebalances, so a
restarted trainer reproduces exactly the scores and anomalies of an uninterrupted one. Readings short
of a whole chunk wait in `pending` (checkpointed with the detector) until more arrive, or until their
partition is caught up and they have waited `TrainerOptions.flush_idle_s`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from flead.federated.device import DeviceClient
from flead.fleet import INTEL_LAB
from flead.model import rules
from services.stream_trainer.pending import PendingReadings

if TYPE_CHECKING:
    from services.stream_trainer.events import DeviceEvents
    from services.stream_trainer.fleet import FleetCalibration


@dataclass(frozen=True, eq=False)
class ScoredChunk:
    rows: np.ndarray  # structured: ts, offset, values (see `pending.reading_dtype`)
    score: np.ndarray
    threshold: np.ndarray  # inf: unjudged (no calibration yet, own or the fleet's)
    severity: np.ndarray  # times over the threshold (0 when unjudged)
    is_anomaly: np.ndarray  # the model's alarm or a physical limit broken
    out_of_range: np.ndarray  # a physical limit broken (flead.model.rules)
    feature_errors: np.ndarray  # (n, features): squared errors, NaN where missing


@dataclass(eq=False)
class DeviceSlot:
    device_id: str
    partition: int
    client: DeviceClient
    pending: PendingReadings
    lineage: str | None = None  # the exchange whose versions `client.base_version` counts
    readings: int = 0  # scored
    anomalies: int = 0
    late: int = 0
    last_event_us: int | None = None  # latest event time received (epoch microseconds)
    last_score: float | None = None
    last_threshold: float | None = None
    state_id: str | None = None  # the state document of the last committed checkpoint
    events: DeviceEvents | None = None  # its alarms grouped into events (outputs.Outputs makes it)

    @property
    def quantum(self) -> int:
        return self.client.detector.train.batch_size

    @property
    def features(self) -> tuple[str, ...]:
        """What the model scores (its feature errors follow this order)."""
        return self.client.detector.features

    @property
    def columns(self) -> tuple[str, ...]:
        """What each of its readings carries: the model's features, then its inputs."""
        return self.client.detector.config.columns

    def whole_chunks(self) -> int:
        """How many waiting readings make whole chunks."""
        return len(self.pending) // self.quantum * self.quantum

    def receive(self, rows: np.ndarray, max_event_us: int) -> None:
        self.pending.extend(rows)
        if self.last_event_us is None or max_event_us > self.last_event_us:
            self.last_event_us = max_event_us

    @property
    def unjudged(self) -> int:
        """Readings scored while no calibration existed (neither its own nor the fleet's)."""
        return self.client.detector.readings_unjudged

    def score(
        self,
        rows: np.ndarray,
        fleet: FleetCalibration | None = None,
        ranges: Mapping[str, tuple[float, float]] = INTEL_LAB.valid_ranges,
    ) -> ScoredChunk:
        """Score, judge and learn `rows` (taken from `pending`) in ONE detector call; with the
        partition's `fleet` calibration lent before, and the scores given to its pool after. A value
        outside its physical `ranges` (the fleet schema's) is an anomaly whatever the model says."""
        n = len(rows)
        values = rows["values"]
        before = fleet.before(self) if fleet is not None else None
        out = self.client.process(values, ts=rows["ts"], explain=True)
        score = out.get_column("score").to_numpy()
        threshold = out.get_column("threshold").to_numpy()
        out_of_range = rules.out_of_range(values, self.columns, ranges)
        flags = out.get_column("is_anomaly").to_numpy() | out_of_range
        self.readings += n
        self.anomalies += int(flags.sum())
        if n:
            self.last_score, self.last_threshold = float(score[-1]), float(threshold[-1])
        errors = out.get_column("feature_errors").to_numpy().reshape(n, -1)
        chunk = ScoredChunk(
            rows, score, threshold, out.get_column("severity").to_numpy(), flags, out_of_range, errors
        )
        if fleet is not None:
            fleet.after(self, chunk, before)
        return chunk
