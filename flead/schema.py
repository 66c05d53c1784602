"""Records that cross a boundary (file, Kafka, MongoDB, Parquet) and their schemas."""

from __future__ import annotations

from datetime import datetime

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1

# The typed lake (one Parquet folder per day, `date=YYYY-MM-DD/`).
LAKE_SCHEMA: dict[str, pl.DataType] = {
    "device_id": pl.String(),  # "mote-01"
    "ts": pl.Datetime("us", "UTC"),
    "epoch": pl.Int64(),
    "temperature": pl.Float64(),  # degrees C
    "humidity": pl.Float64(),  # % RH (temperature-corrected)
    "light": pl.Float64(),  # lux
    "voltage": pl.Float64(),  # volts
    "out_of_range": pl.Boolean(),  # a value outside what the sensor can physically read
    "low_battery": pl.Boolean(),  # voltage below the level where readings stay trustworthy
    "missing_fields": pl.Boolean(),  # the raw line lacked one or more measurements
}
MEASUREMENTS = ("temperature", "humidity", "light", "voltage")
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class Reading(BaseModel):
    """One sensor reading as it travels on Kafka."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    schema_version: int = SCHEMA_VERSION
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    ts: datetime
    epoch: int | None = None
    temperature: float | None = None
    humidity: float | None = None
    light: float | None = None
    voltage: float | None = None

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"unknown schema_version {value} (this build reads {SCHEMA_VERSION})")
        return value

    @field_validator("ts")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("ts must carry a timezone (UTC)")
        return value
