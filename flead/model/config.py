"""What a model is (architecture, serialised with it) and how a device trains it (local settings)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

from flead.fleet import INTEL_LAB, FleetSchema
from flead.schema import MEASUREMENTS

KINDS = ("forecaster", "autoencoder")
ACTIVATIONS = ("tanh", "relu")
ANOMALY_LEARNING = ("downweight", "skip", "learn")
TIME_FEATURES = 2  # sin and cos of the hour of day


@dataclass(frozen=True)
class ModelConfig:
    """The architecture: everything needed to rebuild the network and read its inputs.

    ``autoencoder`` (the default, chosen by measurement: docs/model.md): the window of `window`
    readings ending at a reading, plus the reading's time of day, is squeezed through ``hidden[-1]``
    units and reconstructed; `hidden` lists the encoder sizes and the decoder mirrors them. The
    score of a reading is the reconstruction error of its own row of the window. ``forecaster``:
    the `window` readings before a reading (plus its time of day) predict it; the network outputs
    the change from the last reading of the window.
    """

    kind: str = "autoencoder"
    features: tuple[str, ...] = MEASUREMENTS
    # Inputs that explain the features without being scored themselves (commands sent to a
    # spacecraft's module, a setpoint): in the network's window, never in its output or the score.
    inputs: tuple[str, ...] = ()
    window: int = 16
    hidden: tuple[int, ...] = (64, 8)
    activation: str = "tanh"
    time_features: bool = True
    input_clip: float = 8.0  # normalised inputs are clipped to +-input_clip (standard deviations)
    # Floor of each feature's standard deviation (its resolution), so a constant feature cannot blow
    # up the normalised values. Defaults to the sensors' resolution for known measurements.
    min_std: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if not self.min_std:
            known = INTEL_LAB.resolutions
            object.__setattr__(self, "min_std", tuple(known.get(f, 0.0) for f in self.columns))
        object.__setattr__(self, "min_std", tuple(float(s) for s in self.min_std))
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not self.features or len(set(self.features)) != len(self.features):
            raise ValueError(f"features must be a non-empty list of distinct names, got {self.features}")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"inputs must be distinct names that are not features, got {self.inputs}")
        if not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be an integer >= 1, got {self.window!r}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must list at least one layer size >= 1, got {self.hidden}")
        if not self.input_clip > 0:
            raise ValueError(f"input_clip must be > 0, got {self.input_clip}")
        if len(self.min_std) != len(self.columns) or min(self.min_std) < 0:
            raise ValueError("min_std must give one value >= 0 per feature and input")

    @property
    def n_features(self) -> int:
        """The scored features."""
        return len(self.features)

    @property
    def columns(self) -> tuple[str, ...]:
        """Everything read from a reading, in the network's order: the features, then the inputs."""
        return (*self.features, *self.inputs)

    @property
    def n_columns(self) -> int:
        return len(self.columns)

    @property
    def input_size(self) -> int:
        return self.window * self.n_columns + (TIME_FEATURES if self.time_features else 0)

    @property
    def output_size(self) -> int:
        return self.n_features if self.kind == "forecaster" else self.window * self.n_features

    @property
    def context_length(self) -> int:
        """Readings a stream must remember so that the next reading has a full window."""
        return self.window if self.kind == "forecaster" else self.window - 1

    def layers(self) -> list[tuple[str, int, int]]:
        """(name, fan_in, fan_out) of each dense layer, input to output; weights are ``name.W/.b``."""
        if self.kind == "forecaster":
            sizes = [self.input_size, *self.hidden, self.output_size]
            return [(f"net.{i}", a, b) for i, (a, b) in enumerate(itertools.pairwise(sizes))]
        enc = [self.input_size, *self.hidden]
        dec = [*reversed(self.hidden), self.output_size]
        return [(f"enc.{i}", a, b) for i, (a, b) in enumerate(itertools.pairwise(enc))] + [
            (f"dec.{i}", a, b) for i, (a, b) in enumerate(itertools.pairwise(dec))
        ]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def model_for_fleet(fleet: FleetSchema, features: Sequence[str] | None = None, **overrides) -> ModelConfig:
    """The default architecture for a fleet: its `features` (default: all the schema's) scored, its
    inputs read, each floored at its resolution; the hour of day an input where readings carry clock
    times. `overrides`: any other `ModelConfig` field."""
    scored = fleet.feature_names if features is None else tuple(features)
    resolutions = fleet.resolutions
    return ModelConfig(
        **{
            "features": scored,
            "inputs": fleet.input_names,
            "min_std": tuple(resolutions.get(c, 0.0) for c in (*scored, *fleet.input_names)),
            "time_features": fleet.time.kind != "index",
            **overrides,
        }
    )


@dataclass(frozen=True)
class TrainConfig:
    """How one device trains and judges its model; local, never part of the shared model."""

    learning_rate: float = 2e-3
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-7
    clip_norm: float = 1.0  # global gradient norm
    batch_size: int = 64  # readings per Adam step; process_many cuts larger batches into these
    steps_per_batch: int = 1
    # Readings a new device's model learns before its scores count towards its own calibration (an
    # untrained network's scores are far above its later ones: calibrating on them would set the
    # threshold far too high). It silences nothing: a device is judged whenever a threshold exists,
    # its own or the fleet's.
    warmup: int = 1000
    # The decision: a threshold calibrated on `calibration` readings taken as normal, at this
    # per-reading false-alarm target; scores are smoothed (EWMA over `score_smoothing` readings,
    # 1 = off) before they are judged, so a lasting deviation builds up and lone noise does not.
    false_alarm_rate: float = 1e-3
    calibration: int = 1000
    score_smoothing: int = 20
    # Freeze the normaliser once the device has calibrated (the reference a lasting fault cannot
    # move). Off by default: a 3-std bias stays flagged longer, but on a fleet whose daily cycles are
    # longer than the calibration window normal readings score far higher (docs/model.md).
    freeze_reference: bool = False
    # Flag a feature that repeats its value exactly for longer than calibration ever saw
    # (`flead.model.stuck`): a sensor that stopped updating scores as normal to any model.
    stuck_check: bool = True
    # Flag the first reading after a silence longer than calibration ever saw (`flead.model.gaps`;
    # needs timestamps): a dropout sends nothing a model could score.
    gap_check: bool = True
    # Judge several features' readings by a PCA T²+Q too, where it generalises from the device's
    # normal readings to later ones (`flead.model.subspace`): it sees cross-feature breaks exactly.
    subspace_check: bool = True
    # How readings judged anomalous are learned from: "downweight" (weight (threshold / score)^2,
    # the wilder the less), "skip" (not at all) or "learn" (like any other reading).
    anomaly_learning: str = "downweight"
    max_masked_run: int = 8  # anomalous readings in a row hidden from later windows, at most

    def __post_init__(self) -> None:
        if self.anomaly_learning not in ANOMALY_LEARNING:
            raise ValueError(
                f"anomaly_learning must be one of {ANOMALY_LEARNING}, got {self.anomaly_learning!r}"
            )
        if not self.learning_rate > 0 or not self.clip_norm > 0:
            raise ValueError("learning_rate and clip_norm must be > 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and self.epsilon > 0):
            raise ValueError("Adam needs 0 <= beta1, beta2 < 1 and epsilon > 0")
        if self.batch_size < 1 or self.steps_per_batch < 1 or self.warmup < 0 or self.max_masked_run < 0:
            raise ValueError("batch_size and steps_per_batch must be >= 1, warmup and max_masked_run >= 0")
        if not 0.0 < self.false_alarm_rate < 1.0 or self.calibration < 1 or self.score_smoothing < 1:
            raise ValueError("false_alarm_rate must be within (0, 1), calibration and score_smoothing >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
