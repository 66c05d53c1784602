"""Labelled anomalies injected into lake readings, so detection quality can be measured.

Seven kinds, each placed on one device's time-ordered readings as a stretch of consecutive readings:

- ``spike``: one to a few readings jump by ``magnitude`` device stds (same sign for the stretch);
- ``stuck_at``: the feature repeats the stretch's first value (the sensor stops updating);
- ``drift``: an offset growing linearly to ``magnitude`` stds is added (monotone, every point moves);
- ``noise_burst``: Gaussian noise with a std of ``magnitude`` device stds is added;
- ``bias``: a constant offset of ``magnitude`` stds for hours (a sensor knocked out of calibration);
- ``noise_increase``: Gaussian noise whose std rises linearly from 0 to ``magnitude`` stds over hours
  (a degrading sensor);
- ``dropout``: the readings of the stretch are removed. Removed readings cannot carry a label, so the
  event table keeps their time range (``start_ts``..``end_ts`` = first..last removed reading,
  ``n_points`` = readings removed) and the first reading after the gap is labelled with the event:
  that is the reading on which a streaming detector can first notice the silence. Its values are
  untouched. The labelled reading always exists (the stretch is placed so that it does).

Each event hits one or more features (``InjectionConfig.max_features``); a dropout hits none
(``feature`` is null). Events on a device never overlap and keep ``min_separation`` untouched readings
between them; readings the source flags ``out_of_range`` (and readings missing a hit feature) are
never targeted. The source's flag columns are kept as they are: ``label`` is the ground truth.

Randomness is per device (seed + device id), so a device's events depend only on the seed, the
config and that device's own readings, never on which other devices are in the input.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import date
from itertools import pairwise
from pathlib import Path

import numpy as np
import polars as pl

from flead.datasets.lake import claim_lake, conform_to_lake, lake_fleet, partition_path, write_parquet_atomic
from flead.fleet import INTEL_LAB, FleetSchema
from flead.schema import lake_schema

ANOMALY_TYPES = ("spike", "stuck_at", "drift", "noise_burst", "dropout", "bias", "noise_increase")
# The faults that last: a detector that learns them away, or caps its alarms, misses most of them.
SUSTAINED_TYPES = ("stuck_at", "drift", "bias", "noise_increase")


def labelled_schema(fleet: FleetSchema) -> dict[str, pl.DataType]:
    """The labelled set's columns: the fleet's lake columns and the ground truth."""
    return {
        **lake_schema(fleet),
        "label": pl.Int8(),  # 1 = part of an injected event
        "anomaly_type": pl.String(),  # one of ANOMALY_TYPES; null when label == 0
        "event_id": pl.Int64(),  # EVENTS_SCHEMA.event_id; null when label == 0
    }


LABELLED_SCHEMA = labelled_schema(INTEL_LAB)
EVENTS_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.Int64(),
    "device_id": pl.String(),
    "anomaly_type": pl.String(),
    "feature": pl.String(),  # comma-separated features hit, in the schema's order; null for dropout
    "start_ts": pl.Datetime("us", "UTC"),
    "end_ts": pl.Datetime("us", "UTC"),
    "n_points": pl.Int64(),  # readings changed (dropout: removed)
    "magnitude": pl.Float64(),  # in device stds; null for stuck_at and dropout
}
EVENTS_FILE = "events.parquet"


@dataclass(frozen=True)
class InjectionConfig:
    """Rates in events per device-day (a device-day = a UTC day with readings of that device),
    lengths in readings (inclusive ranges, ~31 s apart), magnitudes in the device's own std."""

    spike_rate: float = 0.5
    stuck_at_rate: float = 0.2
    drift_rate: float = 0.1
    noise_burst_rate: float = 0.2
    dropout_rate: float = 0.1
    bias_rate: float = 0.1
    noise_increase_rate: float = 0.1

    spike_length: tuple[int, int] = (1, 3)
    stuck_at_length: tuple[int, int] = (20, 120)
    drift_length: tuple[int, int] = (60, 360)
    noise_burst_length: tuple[int, int] = (20, 120)
    dropout_length: tuple[int, int] = (20, 240)
    bias_length: tuple[int, int] = (120, 720)
    noise_increase_length: tuple[int, int] = (120, 720)

    spike_magnitude: tuple[float, float] = (5.0, 10.0)
    drift_magnitude: tuple[float, float] = (3.0, 6.0)
    noise_burst_magnitude: tuple[float, float] = (3.0, 6.0)
    bias_magnitude: tuple[float, float] = (2.0, 4.0)
    noise_increase_magnitude: tuple[float, float] = (2.0, 4.0)

    features: tuple[str, ...] = ()  # the features events may hit; () = every feature of the fleet
    max_features: int = 1  # each event hits 1..max_features of `features`
    min_separation: int = 10  # untouched readings between two events of a device

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_rate") and value < 0:
                raise ValueError(f"{f.name} must be >= 0, got {value}")
            if f.name.endswith(("_length", "_magnitude")) and not 0 <= value[0] <= value[1]:
                raise ValueError(f"{f.name} must be a range (low, high) with 0 <= low <= high, got {value}")
            if f.name.endswith("_length") and value[0] < 1:
                raise ValueError(f"{f.name} must start at 1 or more, got {value}")
        if self.features and not 1 <= self.max_features <= len(self.features):
            raise ValueError(f"max_features must be within 1..{len(self.features)}, got {self.max_features}")
        if self.max_features < 1:
            raise ValueError(f"max_features must be >= 1, got {self.max_features}")
        if self.min_separation < 0:
            raise ValueError("min_separation must be >= 0")

    def features_of(self, fleet: FleetSchema) -> tuple[str, ...]:
        """The features events may hit, checked against the fleet's (in the fleet's order)."""
        chosen = self.features or fleet.feature_names
        unknown = sorted(set(chosen) - set(fleet.feature_names))
        if unknown:
            raise ValueError(f"features {unknown} are not features of the fleet schema {fleet.ref}")
        if self.max_features > len(chosen):
            raise ValueError(f"max_features must be within 1..{len(chosen)}, got {self.max_features}")
        return tuple(f for f in fleet.feature_names if f in chosen)

    def rate(self, kind: str) -> float:
        return getattr(self, f"{kind}_rate")

    def length(self, kind: str) -> tuple[int, int]:
        return getattr(self, f"{kind}_length")

    def magnitude(self, kind: str) -> tuple[float, float] | None:
        return getattr(self, f"{kind}_magnitude", None)


@dataclass(frozen=True)
class LabelledData:
    readings: pl.DataFrame  # `labelled_schema`, in the input's row order, dropout rows removed
    events: pl.DataFrame  # EVENTS_SCHEMA, by device_id then start_ts; event_id = row number


def feature_scales(frame: pl.DataFrame, fleet: FleetSchema = INTEL_LAB) -> pl.DataFrame:
    """Per device, the std of each feature over its readings not flagged out_of_range: the unit of the
    injected magnitudes. Floored at the sensor's resolution (a dark room's light barely moves), and at
    1e-9 where none is given, so that an event always changes the values. Columns: device_id, features."""
    features = fleet.feature_names
    floors = {f: max(fleet.resolutions[f], 1e-9) for f in features}
    normal = frame.filter(~pl.col("out_of_range").fill_null(False))
    scales = normal.group_by("device_id").agg(pl.col(f).std() for f in features)
    every = frame.select(pl.col("device_id").unique())
    return every.join(scales, on="device_id", how="left").select(
        "device_id",
        *(pl.max_horizontal(pl.col(f).fill_null(0.0), pl.lit(floors[f])).alias(f) for f in features),
    )


def inject_anomalies(
    frame: pl.DataFrame, config: InjectionConfig | None = None, seed: int = 0, fleet: FleetSchema = INTEL_LAB
) -> LabelledData:
    """Labelled copy of `frame` (lake rows of `fleet`, any days and devices) with anomalies injected.

    `frame` itself is never changed; rows no event touches come out bit-identical.
    """
    config = config or InjectionConfig()
    hittable = config.features_of(fleet)
    frame = conform_to_lake(frame, fleet)
    n = frame.height
    order = frame.with_row_index("_row").sort("device_id", "ts", "_row")
    rows = order["_row"].to_numpy().astype(np.int64)
    device_sorted = order["device_id"]
    first_of_device = np.flatnonzero(device_sorted.ne_missing(device_sorted.shift(1)).to_numpy())
    bounds = [*first_of_device.tolist(), n]

    values = {f: frame[f].to_numpy() for f in hittable}  # read-only views; nulls become NaN
    usable = {f: frame[f].is_not_null().to_numpy() for f in hittable}
    out_of_range = frame["out_of_range"].fill_null(False).to_numpy()
    ts = frame["ts"]
    day = frame["ts"].dt.date().to_physical().to_numpy()
    scales = {row[0]: row[1:] for row in feature_scales(frame, fleet).iter_rows()}

    changes: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {f: [] for f in hittable}
    event_of_row = np.full(n, -1, dtype=np.int64)
    removed = np.zeros(n, dtype=bool)
    events: list[dict] = []
    for a, b in pairwise(bounds):
        device = device_sorted[a]
        device_rows = rows[a:b]
        rng = np.random.default_rng([seed, zlib.crc32(device.encode())])
        device_scale = dict(zip(fleet.feature_names, scales[device], strict=True))
        placed = _place_device(
            rng, config, hittable, device_rows, out_of_range, usable, np.unique(day[device_rows]).size
        )
        for kind, features, span in placed:
            magnitude_range = config.magnitude(kind)
            magnitude = float(rng.uniform(*magnitude_range)) if magnitude_range else None
            event_id = len(events)
            if kind == "dropout":
                hit, marked = span[:-1], span[-1:]
                removed[hit] = True
            else:
                hit = marked = span
                for feature in features:
                    step = magnitude * device_scale[feature] if magnitude is not None else 0.0
                    changes[feature].append((hit, _anomalous(rng, kind, values[feature][hit], step)))
            event_of_row[marked] = event_id
            events.append(
                {
                    "event_id": event_id,
                    "device_id": device,
                    "anomaly_type": kind,
                    "feature": ",".join(features) if features else None,
                    "start_ts": ts[int(hit[0])],
                    "end_ts": ts[int(hit[-1])],
                    "n_points": int(hit.size),
                    "magnitude": magnitude,
                }
            )

    events_frame = pl.DataFrame(events, schema=EVENTS_SCHEMA)
    columns = []
    for feature, edits in changes.items():
        if edits:
            index = np.concatenate([i for i, _ in edits])
            new = np.concatenate([v for _, v in edits])
            columns.append(frame[feature].clone().scatter(index, new))
    event_ids = pl.Series("event_id", event_of_row, dtype=pl.Int64).set(pl.Series(event_of_row < 0), None)
    labelled = frame.with_columns(
        *columns,
        label=pl.Series(event_of_row >= 0, dtype=pl.Int8),
        anomaly_type=events_frame["anomaly_type"].gather(event_ids),
        event_id=event_ids,
    ).filter(pl.Series(~removed))
    return LabelledData(readings=labelled.select(list(labelled_schema(fleet))), events=events_frame)


def _place_device(
    rng: np.random.Generator,
    config: InjectionConfig,
    features_allowed: tuple[str, ...],
    device_rows: np.ndarray,
    out_of_range: np.ndarray,
    usable: dict[str, np.ndarray],
    device_days: int,
) -> list[tuple[str, tuple[str, ...], np.ndarray]]:
    """Non-overlapping stretches for one device: (kind, features hit, rows in the frame, time order)."""
    kinds = [k for k in ANOMALY_TYPES for _ in range(rng.poisson(config.rate(k) * device_days))]
    rng.shuffle(kinds)
    taken = np.zeros(device_rows.size, dtype=bool)
    placed = []
    for kind in kinds:
        length = int(rng.integers(config.length(kind)[0], config.length(kind)[1] + 1))
        if kind == "dropout":
            features: tuple[str, ...] = ()
            span = length + 1  # the removed readings and the reading after them, which gets the label
        else:
            count = int(rng.integers(1, config.max_features + 1))
            chosen = set(rng.choice(features_allowed, size=count, replace=False).tolist())
            features = tuple(f for f in features_allowed if f in chosen)
            span = length
        free = ~taken & ~out_of_range[device_rows]
        for feature in features:
            free &= usable[feature][device_rows]
        start = _random_free_start(rng, free, span)
        if start is None:
            continue  # no room left on this device for a stretch this long
        sep = config.min_separation
        taken[max(0, start - sep) : start + span + sep] = True
        placed.append((start, kind, features, device_rows[start : start + span]))
    # In time order, so event ids run by device then start time.
    return [event[1:] for event in sorted(placed, key=lambda event: event[0])]


def _random_free_start(rng: np.random.Generator, free: np.ndarray, span: int) -> int | None:
    """A random index i with free[i : i + span] all True, or None."""
    blocked = np.flatnonzero(~free)
    positions = np.arange(free.size)
    next_blocked = np.r_[blocked, free.size][np.searchsorted(blocked, positions)]
    candidates = np.flatnonzero(next_blocked - positions >= span)
    return int(rng.choice(candidates)) if candidates.size else None


def _anomalous(rng: np.random.Generator, kind: str, original: np.ndarray, step: float) -> np.ndarray:
    n = original.size
    sign = rng.choice((-1.0, 1.0))
    if kind == "spike":
        return original + sign * step
    if kind == "stuck_at":
        return np.full(n, original[0])
    if kind == "drift":
        return original + sign * step * np.arange(1, n + 1) / n
    if kind == "noise_burst":
        return original + rng.normal(0.0, step, n)
    if kind == "bias":
        return original + sign * step
    if kind == "noise_increase":
        return original + rng.normal(0.0, 1.0, n) * step * np.arange(1, n + 1) / n
    raise ValueError(f"unknown anomaly type {kind!r}")


def read_lake_days(root: Path | str, days: Iterable[date | str]) -> pl.DataFrame:
    """The lake rows (`lake_schema` of the fleet the lake holds) of the given days of the lake at `root`."""
    schema = lake_schema(lake_fleet(Path(root)))
    frames = [
        pl.read_parquet(partition_path(root, date.fromisoformat(d) if isinstance(d, str) else d)).select(
            list(schema)
        )
        for d in days
    ]
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def write_labelled(
    labelled: LabelledData, out_root: Path | str, days: Iterable[date | str] = ()
) -> list[Path]:
    """Write the labelled set: ``date=YYYY-MM-DD/part-0.parquet`` per UTC day and ``events.parquet``.

    Every day with readings gets a partition, as does every day in `days` (empty if dropouts removed
    all of it), so the labelled set mirrors the days it was made from. Files are replaced atomically.
    """
    root = Path(out_root)
    readings = labelled.readings.with_columns(_day=pl.col("ts").dt.date())
    by_day = {key[0]: part.drop("_day") for key, part in readings.partition_by("_day", as_dict=True).items()}
    for d in days:
        day = date.fromisoformat(d) if isinstance(d, str) else d
        by_day.setdefault(day, labelled.readings.clear())
    paths = []
    for day in sorted(by_day):
        path = partition_path(root, day)
        write_parquet_atomic(by_day[day], path)
        paths.append(path)
    write_parquet_atomic(labelled.events, root / EVENTS_FILE)
    return [*paths, root / EVENTS_FILE]


def inject_lake(
    lake_root: Path | str,
    days: Iterable[date | str],
    out_root: Path | str,
    config: InjectionConfig | None = None,
    seed: int = 0,
) -> LabelledData:
    """Read `days` of the lake, inject anomalies and write the labelled set to `out_root`."""
    if Path(out_root).resolve() == Path(lake_root).resolve():
        raise ValueError("the labelled set must go to its own root, never over the lake it comes from")
    days = list(days)
    fleet = lake_fleet(Path(lake_root))
    labelled = inject_anomalies(read_lake_days(lake_root, days), config, seed, fleet)
    claim_lake(Path(out_root), fleet)
    write_labelled(labelled, out_root, days)
    return labelled
