"""The trainer's devices: one keyed state per device (`DeviceSlot`), the readings it buffers until a
whole chunk can be scored (`PendingReadings`), its partition's fleet calibration (`FleetCalibration`)
and its part in the federation (`Federation`: created from the current global version, pushing
updates, adopting newer versions).

Readings are scored in whole chunks of the detector's ``TrainConfig.batch_size``: the detector then
gives bit-identical results however the stream was cut into polls, restarts and rebalances, so a
restarted trainer reproduces exactly the scores and anomalies of an uninterrupted one. Readings short
of a whole chunk wait in `pending` (checkpointed with the detector) until more arrive, or until their
partition is caught up and they have waited `TrainerOptions.flush_idle_s`.

After each scored chunk a device pushes its update every ``push_every`` samples and adopts a newer
global version (pushing what it learned first, as `flead.federated.client` prescribes).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from flead.config import Settings
from flead.federated import GlobalState
from flead.federated.cohort import TrainingCohort
from flead.federated.device import DeviceClient
from flead.fleet import INTEL_LAB
from flead.model import rules
from flead.model.config import TrainConfig
from flead.model.detector import OnlineDetector, ewma
from flead.model.thresholds import ONLINE_FENCE, CalibratedThreshold
from flead.privacy.accountant import contributions_epsilon
from flead.privacy.config import PrivacyConfig
from services.stream_trainer.exchange import ModelExchange
from services.stream_trainer.health import Counters
from services.stream_trainer.options import TrainerOptions

if TYPE_CHECKING:
    from services.stream_trainer.events import DeviceEvents

log = logging.getLogger(__name__)

MIN_CAPACITY = 64
MIN_DEVICES = 4  # a fleet calibration pools the scores of at least this many devices

# ------------------------------------------------------------------------------ waiting readings


def reading_dtype(n_features: int) -> np.dtype:
    return np.dtype([("ts", "M8[us]"), ("offset", "<i8"), ("values", "<f8", (n_features,))])


class PendingReadings:
    """One device's readings waiting to be scored: a growable NumPy structured buffer.

    A row holds what scoring and the outputs need: the event time, the Kafka offset and the model's
    feature values (NaN where missing). The buffer is part of the device's checkpointed state, so
    readings that wait for a full chunk are never lost and never scored twice.
    """

    __slots__ = ("_rows", "_size", "since")

    def __init__(self, dtype: np.dtype, rows: np.ndarray | None = None) -> None:
        self._rows = np.empty(0, dtype) if rows is None else rows
        self._size = 0 if rows is None else len(rows)
        # monotonic time the oldest waiting reading arrived (not persisted: a restart restarts the wait)
        self.since: float | None = time.monotonic() if self._size else None

    def __len__(self) -> int:
        return self._size

    @property
    def dtype(self) -> np.dtype:
        return self._rows.dtype

    def rows(self) -> np.ndarray:
        """The waiting rows (a view: copy before keeping it)."""
        return self._rows[: self._size]

    def extend(self, rows: np.ndarray) -> None:
        needed = self._size + len(rows)
        if needed > len(self._rows):
            grown = np.empty(max(needed, 2 * len(self._rows), MIN_CAPACITY), self._rows.dtype)
            grown[: self._size] = self._rows[: self._size]
            self._rows = grown
        self._rows[self._size : needed] = rows
        if not self._size and len(rows):
            self.since = time.monotonic()
        self._size = needed

    def take(self, n: int) -> np.ndarray:
        """Remove and return the first `n` rows (a copy), in arrival order."""
        if not 0 <= n <= self._size:
            raise ValueError(f"cannot take {n} of {self._size} waiting readings")
        taken = self._rows[:n].copy()
        rest = self._size - n
        self._rows[:rest] = self._rows[n : self._size]
        self._size = rest
        if not rest:
            self.since = None
            if len(self._rows) > 4 * MIN_CAPACITY:  # give back what a burst needed
                self._rows = np.empty(MIN_CAPACITY, self._rows.dtype)
        return taken

    def to_bytes(self) -> bytes:
        return self._rows[: self._size].tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, dtype: np.dtype) -> PendingReadings:
        if len(data) % dtype.itemsize:
            raise ValueError(f"{len(data)} bytes is not a whole number of {dtype.itemsize}-byte readings")
        return cls(dtype, np.frombuffer(data, dtype).copy() if data else None)


# ----------------------------------------------------------------------------------- a device


@dataclass(frozen=True, eq=False)
class ScoredChunk:
    rows: np.ndarray  # structured: ts, offset, values (see `devices.reading_dtype`)
    score: np.ndarray
    threshold: np.ndarray  # inf: unjudged (no calibration yet, own or the fleet's)
    severity: np.ndarray  # times over the threshold (0 when unjudged)
    is_anomaly: np.ndarray  # the model's alarm or a physical limit broken
    out_of_range: np.ndarray  # a physical limit broken (flead.model.rules)
    feature_errors: np.ndarray  # (n, features): squared errors, NaN where missing


@dataclass(eq=False)
class DeviceSlot:
    """One device's keyed state: its federated client (the detector), its waiting readings, its stats."""

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


# -------------------------------------------------------------------------- fleet calibration


@dataclass(frozen=True)
class Before:
    """What a contributing device's scoring started from."""

    limit: float  # the raw threshold in force
    sustained: float  # the sustained threshold in force
    smoothed: float  # the detector's EWMA state


def threshold_source(detector: OnlineDetector) -> str:
    """ "own", "fleet" or "none": where the device's threshold in force comes from."""
    t = detector.threshold
    return t.source if isinstance(t, CalibratedThreshold) else "own"


class FleetCalibration:
    """A partition's fleet calibration: thresholds pooled from its young devices' scores, lent to every
    device of the partition that has no calibration of its own, so a device is judged from its first reading.
    A device's own calibration needs ``TrainConfig.warmup + calibration`` readings (2,000 by default); a
    fleet of short-lived devices would never be judged. So each partition pools the scores of its devices
    that are past ``fleet_warmup`` readings and not yet calibrated themselves (at most ``calibration /
    MIN_DEVICES`` per device, so that no single device makes the fleet's normal): the raw scores, and
    their EWMA over ``score_smoothing`` readings for the sustained channel, each only where the threshold
    in force did not flag them. Once both pools hold ``calibration`` scores, `calibrated_threshold` is
    fitted on them (as a device's own online calibration is, fenced) and held: from then on every device
    of the partition without its own calibration borrows it (`OnlineDetector.borrow`) until it has its own.

    Deterministic with respect to the stream: the pool is per partition and, until it is fitted, the
    partition's whole chunks are scored in the order of the offset that completed them (`schedule`), so
    whether a chunk was judged with the fleet's calibration depends only on the partition's records, not
    on how they were cut into polls, restarts or rebalances. The pool is checkpointed with the partition's
    offset (one document write), so a killed trainer resumes it exactly.
    """

    def __init__(self, train: TrainConfig, fleet_warmup: int) -> None:
        self.n = train.calibration
        self.false_alarm_rate = train.false_alarm_rate
        self.span = train.score_smoothing
        self.fleet_warmup = fleet_warmup
        self.per_device = math.ceil(self.n / MIN_DEVICES)
        self.raw: list[float] = []
        self.sustained: list[float] = []
        self.contributed: dict[str, int] = {}  # scores taken from each device
        self.fitted: tuple[float, float | None] | None = None  # (raw, sustained) once fitted

    @property
    def sealed(self) -> bool:
        return self.fitted is not None

    # ------------------------------------------------------------------------------- scoring

    def lend(self, slot: DeviceSlot) -> None:
        """Let a device without a calibration judge with the fleet's."""
        detector = slot.client.detector
        if self.fitted is not None and threshold_source(detector) == "none":
            detector.borrow(*self.fitted)

    def before(self, slot: DeviceSlot) -> Before | None:
        """Called before a device scores; what `after` needs if its scores will feed the pool."""
        self.lend(slot)
        detector = slot.client.detector
        if self.sealed or threshold_source(detector) == "own" or detector.readings_seen < self.fleet_warmup:
            return None
        if self.contributed.get(slot.device_id, 0) >= self.per_device:
            return None
        sustained = detector.sustained.value if detector.sustained is not None else math.inf
        return Before(detector.threshold.value, sustained, detector.smoothed)

    def after(self, slot: DeviceSlot, chunk: ScoredChunk, before: Before | None) -> None:
        if before is None or self.sealed:
            return
        raw = chunk.score
        present = np.isfinite(chunk.rows["values"]).any(axis=1)
        capped = np.minimum(raw, 2.0 * before.limit) if math.isfinite(before.limit) else raw
        smoothed = ewma(capped, self.span, before.smoothed)
        room = self.per_device - self.contributed.get(slot.device_id, 0)
        raw_kept = raw[present & (raw <= before.limit)][:room].tolist()
        smooth_kept = smoothed[present & (smoothed <= before.sustained)][:room].tolist()
        self.raw += raw_kept
        self.sustained += smooth_kept
        self.contributed[slot.device_id] = self.contributed.get(slot.device_id, 0) + len(raw_kept)
        if len(self.raw) >= self.n and len(self.sustained) >= self.n:
            self._fit(slot.client.detector.sustained is not None)

    def _fit(self, with_sustained: bool) -> None:
        def fit(scores: list[float]) -> float:
            threshold = CalibratedThreshold(self.false_alarm_rate, self.n)
            threshold.calibrate(np.sort(np.asarray(scores)), fence=ONLINE_FENCE)
            return threshold.fitted

        self.fitted = (fit(self.raw), fit(self.sustained) if with_sustained else None)
        self.raw, self.sustained, self.contributed = [], [], {}

    def schedule(self, slots: Iterable[DeviceSlot]) -> Iterator[tuple[DeviceSlot, int]]:
        """(device, readings to score) for the whole chunks waiting in `slots`: one chunk at a time in
        the order of the offset of each chunk's last reading while the pool is not fitted, then the
        rest of each device's whole chunks in one call."""
        slots = list(slots)
        if not self.sealed:
            ready = []
            for slot in slots:
                q, offsets = slot.quantum, slot.pending.rows()["offset"]
                ready += [(int(offsets[k + q - 1]), slot) for k in range(0, slot.whole_chunks(), q)]
            ready.sort(key=lambda item: item[0])
            for _, slot in ready:
                if self.sealed:
                    break
                yield slot, slot.quantum
        for slot in slots:
            whole = slot.whole_chunks()
            if whole:
                yield slot, whole

    # ----------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        return {
            "fitted": None if self.fitted is None else list(self.fitted),
            "raw": self.raw,  # doubles: a restored pool is the pool (a restart equals no restart)
            "sustained": self.sustained,
            "contributed": self.contributed,
        }

    @classmethod
    def restore(cls, state: dict | None, train: TrainConfig, fleet_warmup: int, partition: int):
        """The pool a checkpoint saved; an empty one (logged) if its state is unreadable."""
        try:
            return cls.from_state_dict(state, train, fleet_warmup)
        except ValueError as exc:
            log.error("partition %d: %s; its fleet calibration starts over", partition, exc)
            return cls(train, fleet_warmup)

    @classmethod
    def from_state_dict(cls, state: dict | None, train: TrainConfig, fleet_warmup: int) -> FleetCalibration:
        pool = cls(train, fleet_warmup)
        if state is None:
            return pool
        try:
            if state["fitted"] is not None:
                raw, sustained = state["fitted"]
                pool.fitted = (float(raw), None if sustained is None else float(sustained))
            pool.raw = [float(x) for x in state["raw"]]
            pool.sustained = [float(x) for x in state["sustained"]]
            pool.contributed = {str(k): int(v) for k, v in state["contributed"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad fleet calibration state: {exc!r}") from exc
        return pool

    def summary(self) -> dict:
        raw, sustained = self.fitted if self.fitted is not None else (None, None)
        return {"fitted": self.sealed, "raw": raw, "sustained": sustained, "pooled": len(self.raw)}


def threshold_sources(slots: Iterable[DeviceSlot]) -> dict[str, int]:
    """How many devices judge with their own calibration, the fleet's, or none yet."""
    counts = {"own": 0, "fleet": 0, "none": 0}
    for slot in slots:
        counts[threshold_source(slot.client.detector)] += 1
    return counts


def privacy_stats(client: DeviceClient) -> dict:
    """With DP on: the globals its adoption guard kept out, whether its budget is spent and, with local
    DP, the epsilon of the updates it sent (at the deployment's delta)."""
    privacy = client.privacy
    if not (privacy.enabled or client.budget_exhausted):
        return {}
    shown = {
        "privacy_budget_exhausted": client.budget_exhausted,
        "rejected_versions": client.rejected_versions,
    }
    if privacy.mode == "local":
        shown["privacy_epsilon"] = client.epsilon
    return shown


def privacy_summary(slots: Iterable[DeviceSlot], privacy: PrivacyConfig) -> dict:
    """The trainer's devices under DP, for /health: how many spent their budget, how many globals
    the adoption guard kept out and, with local DP, the largest epsilon any device reached."""
    summary: dict = {"mode": privacy.mode}
    if not privacy.enabled:
        return summary
    clients = [slot.client for slot in slots]
    summary |= {
        "epsilon_budget": privacy.epsilon_budget,
        "delta": privacy.delta,
        "devices_exhausted": sum(c.budget_exhausted for c in clients),
        "rejected_versions": sum(c.rejected_versions for c in clients),
    }
    if privacy.mode == "local":
        spent = {tuple(sorted(c.released.items())) for c in clients if c.released}  # few distinct
        summary["max_epsilon"] = max(
            (contributions_epsilon(dict(s), privacy.delta) for s in spent), default=0.0
        )
    return summary


# -------------------------------------------------------------------------------- federation


class Federation:
    def __init__(
        self, settings: Settings, options: TrainerOptions, exchange: ModelExchange, counters: Counters
    ) -> None:
        self.settings, self.options, self.exchange, self.counters = settings, options, exchange, counters
        self.privacy = settings.privacy()
        size = settings.trainer_training_devices
        # each partition's share: its cohort moves, and is checkpointed, with it (see `new_cohort`)
        self.cohort_size = math.ceil(size / settings.topic_readings_partitions) if size else None

    def new_cohort(self, state: dict | None = None, partition: int | None = None) -> TrainingCohort:
        """A partition's training cohort (`state`: as its checkpoint saved it). A process holds at most
        FLEAD_TRAINER_TRAINING_DEVICES training devices when it owns every partition of the readings
        topic (FLEAD_TOPIC_READINGS_PARTITIONS), proportionally fewer when it owns fewer."""
        try:
            return TrainingCohort.from_state_dict(self.cohort_size, state)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("partition %s: unreadable training cohort (%r); it starts over", partition, exc)
            return TrainingCohort(self.cohort_size)

    @property
    def columns(self) -> tuple[str, ...]:
        """What the global model reads of each reading: its features, then its inputs."""
        return self.exchange.model_config.columns

    def new_slot(self, device_id: str, partition: int) -> DeviceSlot:
        config = self.exchange.model_config
        detector = OnlineDetector(config, train=self.options.train, seed=self.options.seed)
        client = DeviceClient(
            device_id,
            detector,
            self.exchange.client_config,
            push_every=self.settings.trainer_push_every,
            privacy=self.privacy,
        )
        slot = DeviceSlot(device_id, partition, client, PendingReadings(reading_dtype(len(config.columns))))
        state = self.exchange.latest(None)
        if state is not None:
            self.adopt(slot, state)
        self.counters.add("devices_created")
        return slot

    def before_scoring(self, slot: DeviceSlot, cohort: TrainingCohort) -> None:
        """Whether the device trains on its next chunk is its partition's cohort's to say."""
        cohort.admit(slot.client)

    def after_scoring(self, slot: DeviceSlot, chunk: ScoredChunk, cohort: TrainingCohort) -> None:
        client = slot.client
        if not client.budget_exhausted and self.exchange.over_budget(slot.device_id):
            client.budget_exhausted = True  # the server refused it for its privacy budget
            self.counters.add("privacy_exhausted_by_server")
        same_lineage = slot.lineage == self.exchange.lineage
        state = self.exchange.latest(client.base_version if same_lineage else None)
        update = client.take_update(force=state is not None) if same_lineage else None
        if client.budget_exhausted:
            # Without local DP the device does not check its budget itself; once it is spent, nothing
            # it learned leaves it. Its round still ends, so it gives its cohort place up in turn.
            if update is not None:
                self.counters.add("updates_withheld")
            update = None
            cohort.after_push(client)
        if update is not None:
            finite = chunk.score[np.isfinite(chunk.score)]
            metrics = {
                **update.metrics,  # the training loss
                "mean_score": float(finite.mean()) if finite.size else 0.0,
                "anomaly_rate": float(chunk.is_anomaly.mean()) if len(chunk.is_anomaly) else 0.0,
            }
            self.exchange.push(dataclasses.replace(update, metrics=metrics))
            self.counters.add("updates_pushed")
            cohort.after_push(client)
        if state is not None:
            self.adopt(slot, state)

    def adopt(self, slot: DeviceSlot, state: GlobalState) -> None:
        client = slot.client
        client.client = self.exchange.client_config
        try:
            client.adopt(state)
        except ValueError as exc:  # e.g. a restored device of another architecture
            self.counters.add("adoption_errors")
            log.error("device %s cannot adopt global version %d: %s", slot.device_id, state.version, exc)
            return
        slot.lineage = self.exchange.lineage
        self.counters.add("adoptions")
