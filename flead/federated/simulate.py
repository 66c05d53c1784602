"""N devices over their own streams in one process: federated, local-only or centralized training.

Devices take turns in a random order each step, one micro-batch each. In federated mode a device
pushes its learning every `push_every` samples; each update reaches the server after a random delay
of 0..`max_delay_steps` steps (so updates arrive out of order and some are stale), the server
aggregates whenever `aggregate_every` updates wait (FedBuff), and a device adopts the newest version
at its next turn, pushing what it has not pushed first. Local-only devices never share; centralized
devices train one shared network (one optimiser) on everybody's data in the same interleaved order,
which is what pooling the data at a centre would give, while each device keeps its own normaliser and
threshold, as in the other modes.

Two phases: `train` streams are processed prequentially with learning (their outputs are dropped),
then each device's threshold is calibrated on its train stream (taken as normal) and the `score`
streams are scored with frozen weights. With ``score=None`` (online evaluation) the `train` streams'
prequential outputs are the result, each device calibrating on its first readings; in federated mode a
device not yet calibrated borrows the fleet's threshold (the median of the calibrated devices').
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from flead.federated.buffer import UpdateBuffer
from flead.federated.client import ClientConfig
from flead.federated.cohort import TrainingCohort
from flead.federated.config import AggregationConfig
from flead.federated.device import DeviceClient
from flead.federated.state import GlobalState
from flead.federated.update import LocalUpdate
from flead.federated.weights import global_norm
from flead.model.config import ModelConfig, TrainConfig
from flead.model.detector import OnlineDetector, fleet_calibration
from flead.model.thresholds import CalibratedThreshold, QuantileThreshold

MODES = ("federated", "local", "centralized")


@dataclass(frozen=True)
class SimulationConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    batch_size: int = 256  # readings a device processes per turn
    push_every: int = 1024  # samples between a device's updates
    aggregate_every: int | None = None  # pending updates that trigger an aggregation (default: devices / 2)
    max_delay_steps: int = 2  # an update arrives 0..max_delay_steps steps after it was sent
    # Federated devices training at once (`flead.federated.cohort`); None: every device, always.
    training_devices: int | None = None
    epochs: int = 1  # passes over the train streams
    # None (the default): each device's threshold is calibrated on its train part, taken as normal,
    # at the train config's false-alarm rate (online: on its first readings, or the fleet's until
    # then). A number q: the old alarm budget, the q-quantile of the device's scores so far.
    threshold_quantile: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.push_every < 1 or self.epochs < 1 or self.max_delay_steps < 0:
            raise ValueError("batch_size, push_every and epochs must be >= 1, max_delay_steps >= 0")


@dataclass
class SimulationResult:
    mode: str
    detectors: dict[str, OnlineDetector]
    outputs: (
        pl.DataFrame
    )  # device_id, position (row within the device's scored stream), score, threshold, severity, is_anomaly
    history: list[dict] = field(default_factory=list)  # one summary per global version made
    # Differential privacy (federated mode with `aggregation.privacy` on): each device's epsilon, and
    # the epsilon the final global model carries (the largest of any device's that reached it).
    device_epsilons: dict[str, float] = field(default_factory=dict)
    model_epsilon: float | None = None
    updates_sent: dict[str, int] = field(default_factory=dict)  # federated: per device
    update_norms: list[float] = field(default_factory=list)  # federated: every update's delta norm, as sent
    readings_trained: int = 0
    readings_scored: int = 0
    seconds: float = 0.0


def simulate(
    train: Mapping[str, pl.DataFrame],
    score: Mapping[str, pl.DataFrame] | None = None,
    mode: str = "federated",
    config: SimulationConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    calibration_exclude: Mapping[str, np.ndarray] | None = None,
) -> SimulationResult:
    """Train a detector per device in `mode` over the `train` streams, then score the `score` streams.

    `calibration_exclude`: per device, train readings left out of its calibration (known anomalies).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    config = config or SimulationConfig()
    devices = sorted(train)
    if score is not None and set(score) - set(train):
        raise ValueError(f"devices to score without a train stream: {sorted(set(score) - set(train))}")
    run = _Run(devices, mode, config)
    started = time.perf_counter()
    total = sum(f.height for f in train.values()) * config.epochs
    total += sum(f.height for f in score.values()) if score is not None else 0
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    online = score is None
    outputs = []
    for _ in range(config.epochs if not online else 1):
        outputs = run.pass_over(train, learn=True, keep=online, on_batch=tick)
    run.finish_training()
    if not online:
        run.calibrate(train, calibration_exclude)
        outputs = run.pass_over(score, learn=False, keep=True, on_batch=tick)
    frame = pl.concat(outputs) if outputs else pl.DataFrame(schema=_OUTPUT_SCHEMA)
    private = mode == "federated" and config.aggregation.privacy.enabled
    return SimulationResult(
        mode=mode,
        detectors={d: c.detector for d, c in run.clients.items()},
        outputs=frame.sort("device_id", "position"),
        history=run.history,
        device_epsilons={d: run.buffer.ledger.epsilon(d) for d in devices} if private else {},
        model_epsilon=run.buffer.epsilons[run.buffer.version] if private else None,
        updates_sent={d: c.sequence for d, c in run.clients.items()} if mode == "federated" else {},
        update_norms=run.norms,
        readings_trained=sum(f.height for f in train.values()) * config.epochs,
        readings_scored=frame.height,
        seconds=time.perf_counter() - started,
    )


_OUTPUT_SCHEMA = {
    "device_id": pl.String,
    "position": pl.Int64,
    "score": pl.Float64,
    "threshold": pl.Float64,
    "severity": pl.Float64,
    "is_anomaly": pl.Boolean,
}


class _Run:
    def __init__(self, devices: list[str], mode: str, config: SimulationConfig) -> None:
        self.mode, self.config = mode, config
        self.rng = np.random.default_rng(config.seed)
        privacy = config.aggregation.privacy if mode == "federated" else None
        self.clients = {
            d: DeviceClient(
                d,
                OnlineDetector(
                    config.model,
                    train=config.train,
                    threshold=None
                    if config.threshold_quantile is None
                    else QuantileThreshold(q=config.threshold_quantile),
                    seed=config.seed,
                ),
                config.client,
                config.push_every,
                privacy=privacy,
                rng=np.random.default_rng([config.seed, index]),
            )
            for index, d in enumerate(devices)
        }
        self.history: list[dict] = []
        self.step = 0
        self.in_flight: list[tuple[int, LocalUpdate]] = []  # (arrival step, update)
        self.norms: list[float] = []
        first = next(iter(self.clients.values())).detector
        self.cohort = TrainingCohort(config.training_devices if mode == "federated" else None)
        if mode == "federated":
            self.buffer = UpdateBuffer(
                GlobalState.initial(first.get_weights()),
                config.aggregation,
                rng=np.random.default_rng([config.seed, len(devices)]),
            )
            self.aggregate_every = config.aggregate_every or max(1, len(devices) // 2)
            for client in self.clients.values():
                client.adopt(self.buffer.state)
        elif mode == "centralized":
            self.shared_weights = first.get_weights()
            for client in self.clients.values():
                client.detector.optimizer = first.optimizer  # one network, one optimiser

    def pass_over(self, streams, *, learn: bool, keep: bool, on_batch) -> list[pl.DataFrame]:
        size = self.config.batch_size
        position = dict.fromkeys(streams, 0)
        outputs = []
        active = [d for d in sorted(streams) if streams[d].height]
        while active:
            self.step += 1
            for device in self.rng.permutation(active):
                frame, start = streams[device], position[device]
                batch = frame.slice(start, size)
                out = self._process(device, batch, learn)
                position[device] = start + batch.height
                on_batch(batch.height)
                if keep:
                    outputs.append(
                        out.with_columns(
                            pl.lit(device).alias("device_id"),
                            pl.int_range(start, start + batch.height, dtype=pl.Int64).alias("position"),
                        ).select(list(_OUTPUT_SCHEMA))
                    )
            active = [d for d in active if position[d] < streams[d].height]
            if learn and self.mode == "federated":
                self._deliver(self.step)
        return outputs

    def finish_training(self) -> None:
        if self.mode != "federated":
            return
        for client in self.clients.values():
            update = client.take_update(force=True)
            if update is not None:
                self.norms.append(global_norm(update.arrays))
                self.in_flight.append((self.step, update))
        self._deliver(None)
        if len(self.buffer):
            self._record(self.buffer.aggregate())
        for client in self.clients.values():
            if client.base_version != self.buffer.version:
                client.adopt(self.buffer.state)

    def calibrate(
        self, streams: Mapping[str, pl.DataFrame], exclude: Mapping[str, np.ndarray] | None
    ) -> None:
        """Each device's threshold from its (normal) train stream, scored by its final model."""
        for device, client in self.clients.items():
            if isinstance(client.detector.threshold, CalibratedThreshold) and streams[device].height:
                left_out = None if exclude is None else exclude.get(device)
                client.detector.calibrate(streams[device], exclude=left_out)

    def _share_calibration(self) -> None:
        """Devices not yet calibrated borrow the fleet's thresholds: the medians of the calibrated ones."""
        fleet = fleet_calibration([c.detector.calibration for c in self.clients.values()])
        for client in self.clients.values():
            client.detector.borrow(*fleet)

    def _process(self, device: str, batch: pl.DataFrame, learn: bool) -> pl.DataFrame:
        client = self.clients[device]
        if self.mode == "centralized" and learn:
            client.detector.set_weights(self.shared_weights)
            out = client.process(batch, learn=True)
            self.shared_weights = client.detector.get_weights()
            return out
        if self.mode == "centralized":
            client.detector.set_weights(self.shared_weights)
        if self.mode == "federated" and learn:
            self.cohort.admit(client)
            if client.base_version != self.buffer.version:
                self._send(client.take_update(force=True))
                client.adopt(self.buffer.state)
            out = client.process(batch, learn=True)
            self._send(client.take_update())
            self.cohort.after_push(client)
            return out
        return client.process(batch, learn=learn)

    def _send(self, update: LocalUpdate | None) -> None:
        if update is not None:
            self.norms.append(global_norm(update.arrays))
            delay = int(self.rng.integers(0, self.config.max_delay_steps + 1))
            self.in_flight.append((self.step + delay, update))

    def _deliver(self, step: int | None) -> None:
        """Hand the server the updates that have arrived by `step` (all when None); aggregate when due."""
        arrived = [u for due, u in self.in_flight if step is None or due <= step]
        self.in_flight = [(due, u) for due, u in self.in_flight if step is not None and due > step]
        for update in arrived:
            self.buffer.submit(update)
            result = self.buffer.aggregate_if_ready(self.aggregate_every)
            if result is not None:
                self._record(result)

    def _record(self, result) -> None:
        if result.new_state is None:
            return
        self._share_calibration()
        s = result.summary
        self.history.append(
            {
                "version": result.new_state.version,
                "updates": s.n_updates,
                "devices": s.n_devices,
                "samples": s.total_samples,
                "mean_staleness": s.mean_staleness,
                "mean_loss": s.mean_loss,  # the updates' training loss, sample-weighted
                "refused": s.n_refused,
                "epsilon": self.buffer.epsilons.get(result.new_state.version),
                "step": self.step,
            }
        )
