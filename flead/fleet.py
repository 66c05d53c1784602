"""The fleet schema: what a fleet's sensors measure, declared once and used by every stage.

A schema names the features a device reports (unit, the physical limits outside which a reading is
impossible, the sensor's resolution), optional inputs that explain a signal without being scored
(a command sent to a module, a setpoint), and where a table of readings keeps its device id and its
time. The lake's columns, the Kafka message's feature map, the detector's features and resolutions,
the out-of-range rule and the reports all come from it. Three presets ship (`PRESETS`): the Intel
Berkeley Lab motes, and the NASA SMAP and MSL telemetry (their command counts differ); a user's fleet
is a small TOML file:

    name = "plant-a"
    version = 1
    device_column = "sensor"

    [time]
    column = "timestamp"          # kind = "datetime" (default), "epoch_seconds" or "index"

    [[features]]
    name = "pressure"
    unit = "bar"
    min = 0.0
    max = 16.0
    resolution = 0.01

    [[inputs]]
    name = "valve_open"

`load_fleet(spec)` takes a preset name or the path of such a file; errors name the file and field.

>>> fleet = load_fleet("intel_lab")
>>> fleet.feature_names
('temperature', 'humidity', 'light', 'voltage')
>>> fleet.valid_ranges["humidity"]
(0.0, 100.0)
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
# Columns the lake adds to every fleet's values, and the Kafka message's own keys: not value names.
RESERVED = frozenset(
    {"device_id", "ts", "epoch", "out_of_range", "low_battery", "missing_fields", "date"}
    | {"schema_version", "fleet", "values", "partition", "offset"}
)


class FleetSchemaError(ValueError):
    """A fleet schema that cannot be used, with what is wrong and where."""


class Feature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    unit: str = ""
    min: float | None = None  # what the sensor can physically report (inclusive); outside: out_of_range
    max: float | None = None
    resolution: float = Field(0.0, ge=0.0)  # the smallest change the sensor reports; 0 = unknown
    # Readings of the device stop being trustworthy below this level of this feature (a battery's
    # voltage): they are flagged `low_battery`, never dropped.
    low_battery_below: float | None = None

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED:
            raise ValueError(f"{value!r} is a column the lake adds itself; choose another name")
        return value

    @model_validator(mode="after")
    def _range(self) -> Feature:
        if self.min is not None and self.max is not None and not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self


class TimeColumn(BaseModel):
    """Where a table keeps each reading's time. ``datetime``: text or a datetime column (ISO-8601, or
    `format` for strptime); ``epoch_seconds``: a number of seconds since 1970 UTC; ``index``: a row
    counter (no clock: the readings are `step_seconds` apart from `origin`, in the lake and on Kafka)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str = "ts"
    kind: Literal["datetime", "epoch_seconds", "index"] = "datetime"
    format: str | None = None
    step_seconds: float = Field(60.0, gt=0.0)
    origin: datetime = datetime(2000, 1, 1, tzinfo=UTC)

    @field_validator("origin")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


class FleetSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(1, ge=1)
    description: str = ""
    device_column: str = "device_id"
    time: TimeColumn = TimeColumn()
    features: tuple[Feature, ...] = Field(min_length=1)
    inputs: tuple[Feature, ...] = ()

    @model_validator(mode="after")
    def _distinct(self) -> FleetSchema:
        names = [f.name for f in (*self.features, *self.inputs)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"feature and input names must be distinct; repeated: {repeated}")
        return self

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.inputs)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every value a reading carries: the features, then the inputs."""
        return self.feature_names + self.input_names

    @property
    def valid_ranges(self) -> dict[str, tuple[float, float]]:
        """Physical limits of the values that declare them (an open side is +-inf)."""
        return {
            f.name: (-float("inf") if f.min is None else f.min, float("inf") if f.max is None else f.max)
            for f in (*self.features, *self.inputs)
            if f.min is not None or f.max is not None
        }

    @property
    def resolutions(self) -> dict[str, float]:
        return {f.name: f.resolution for f in (*self.features, *self.inputs)}

    @property
    def low_battery(self) -> dict[str, float]:
        values = (*self.features, *self.inputs)
        return {f.name: f.low_battery_below for f in values if f.low_battery_below is not None}

    @property
    def ref(self) -> str:
        """``name@version``: what a Kafka message names to say which schema its features follow."""
        return f"{self.name}@{self.version}"


INTEL_LAB = FleetSchema(
    name="intel_lab",
    description="Intel Berkeley Research Lab, 54 Mica2Dot motes, 2004-02-28 .. 2004-04-05",
    time=TimeColumn(column="ts"),
    # What an indoor Mica2Dot reading can physically be (inclusive). Dying motes report values such as
    # 122 C, -38.4 C and -4 %RH (the sensors' raw-zero readings); those fall outside and get flagged.
    # The light sensor saturates near 1,850 lux; 100,000 lux is full sunlight. Below 2.4 V readings
    # stop being trustworthy: in the 9-mote subset no reading at >= 2.4 V is out of range, while 1 %
    # at 2.35-2.40 V and 42 % at 2.30-2.35 V are. Resolutions: the sensors' steps (light's 0.46 lux).
    features=(
        Feature(name="temperature", unit="°C", min=-10.0, max=60.0, resolution=0.01),
        Feature(name="humidity", unit="%RH", min=0.0, max=100.0, resolution=0.1),
        Feature(name="light", unit="lux", min=0.0, max=100_000.0, resolution=0.46),
        Feature(name="voltage", unit="V", min=1.5, max=3.5, resolution=0.01, low_battery_below=2.4),
    ),
)


def _nasa(craft: str, commands: int, description: str) -> FleetSchema:
    return FleetSchema(
        name=f"nasa_{craft}",
        description=f"{description} telemetry channels (Hundman et al., KDD 2018): one channel per "
        "device, its value scaled to -1..1, the one-hot commands of its module as inputs; t counts readings",
        time=TimeColumn(column="t", kind="index", step_seconds=60.0),
        features=(Feature(name="value", min=-1.0, max=1.0),),
        inputs=tuple(Feature(name=f"cmd_{i:02d}", min=0.0, max=1.0) for i in range(1, commands + 1)),
    )


NASA_SMAP = _nasa("smap", 24, "NASA Soil Moisture Active Passive satellite")
NASA_MSL = _nasa("msl", 54, "NASA Mars Science Laboratory rover")

PRESETS: dict[str, FleetSchema] = {s.name: s for s in (INTEL_LAB, NASA_SMAP, NASA_MSL)}


def load_fleet(spec: str | Path) -> FleetSchema:
    """A preset by name, or a fleet schema from a TOML (or JSON) file."""
    if isinstance(spec, str) and spec in PRESETS:
        return PRESETS[spec]
    path = Path(spec)
    if not path.is_file():
        raise FleetSchemaError(
            f"fleet schema {str(spec)!r} is neither a preset ({', '.join(PRESETS)}) nor a file"
        )
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            return FleetSchema.model_validate_json(text)
        return FleetSchema.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise FleetSchemaError(f"{path}: not valid TOML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()
        )
        raise FleetSchemaError(f"{path}: {problems}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetSchemaError(f"{path}: cannot read it: {exc}") from None
