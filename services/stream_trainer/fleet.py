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

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from flead.model.config import TrainConfig
from flead.model.detector import OnlineDetector, ewma
from flead.model.thresholds import ONLINE_FENCE, CalibratedThreshold
from services.stream_trainer.slot import DeviceSlot, ScoredChunk

log = logging.getLogger(__name__)

MIN_DEVICES = 4  # a fleet calibration pools the scores of at least this many devices


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
