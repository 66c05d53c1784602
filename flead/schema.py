"""Records that cross a boundary (file, Kafka, MongoDB, Parquet) and their schemas."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from flead.fleet import INTEL_LAB, FleetSchema

# The Kafka message's layout: 2 = a `values` map of a fleet schema (1 was the Intel Lab's flat fields).
SCHEMA_VERSION = 2
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # times cross boundaries as integer microseconds since it (UTC)


def lake_schema(fleet: FleetSchema) -> dict[str, pl.DataType]:
    """The typed lake's columns for a fleet (one Parquet folder per day, `date=YYYY-MM-DD/`)."""
    return {
        "device_id": pl.String(),
        "ts": pl.Datetime("us", "UTC"),
        "epoch": pl.Int64(),  # the source's own sequence number, when it has one
        **{name: pl.Float64() for name in fleet.columns},
        "out_of_range": pl.Boolean(),  # a value outside what the sensor can physically read
        "low_battery": pl.Boolean(),  # below the level where the device's readings stay trustworthy
        "missing_fields": pl.Boolean(),  # the source row lacked one or more of the values
    }


def lake_flags(fleet: FleetSchema) -> list[pl.Expr]:
    """``out_of_range`` and ``low_battery`` of rows holding the fleet's values (missing never trips)."""
    out_of_range = pl.lit(False)
    for name, (low, high) in fleet.valid_ranges.items():
        out_of_range = out_of_range | ~pl.col(name).is_between(low, high).fill_null(True)
    low_battery = pl.lit(False)
    for name, level in fleet.low_battery.items():
        low_battery = low_battery | (pl.col(name) < level).fill_null(False)
    return [out_of_range.alias("out_of_range"), low_battery.alias("low_battery")]


# The Intel Lab preset's lake and measurements (the default fleet).
LAKE_SCHEMA: dict[str, pl.DataType] = lake_schema(INTEL_LAB)
MEASUREMENTS = INTEL_LAB.feature_names
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
INT64_MAX = 2**63 - 1
# The date and time written out (RFC 3339 allows a space for the `T`); a number of seconds is not a time.
_ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


class Reading(BaseModel):
    """One sensor reading as it travels on Kafka: its device, time and the values of its fleet schema.

    ``fleet`` names the schema the ``values`` follow (`FleetSchema.ref`, ``name@version``); a reader
    checks it and the value names against its own schema (`check_fleet`). Strict: a value of the wrong
    JSON type is refused, never converted (``"21.5"``, ``true``, ``"7"``); a JSON integer is a valid
    value, null a missing one. ``ts`` is an ISO-8601 date and time with a time zone, normalised to UTC."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    schema_version: int = SCHEMA_VERSION
    fleet: str
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    ts: datetime = Field(strict=False)  # text, checked by `_iso_text` first (strict would refuse text)
    epoch: int | None = Field(None, ge=-INT64_MAX - 1, le=INT64_MAX)  # the lake's Int64
    values: dict[str, float | None]

    def check_fleet(self, fleet: FleetSchema) -> str | None:
        """Why the reading does not belong to `fleet` (another schema, unknown value names), or None."""
        if self.fleet != fleet.ref:
            return f"fleet {self.fleet!r} is not this deployment's fleet schema {fleet.ref!r}"
        unknown = [name for name in self.values if name not in fleet.columns]
        if unknown:
            return f"values {unknown} are not in the fleet schema {fleet.ref} (it has {list(fleet.columns)})"
        return None

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value == 1:
            raise ValueError(
                "schema_version 1 (flat Intel Lab fields) is no longer read: this build reads "
                f"{SCHEMA_VERSION}, a `values` map of the fleet schema named by `fleet`"
            )
        if value != SCHEMA_VERSION:
            raise ValueError(f"unknown schema_version {value} (this build reads {SCHEMA_VERSION})")
        return value

    @field_validator("ts", mode="before")
    @classmethod
    def _iso_text(cls, value: object) -> object:
        if isinstance(value, datetime) or (isinstance(value, str) and _ISO_DATETIME.match(value)):
            return value
        raise ValueError(
            "ts must be an ISO-8601 date and time with a time zone, like 2004-03-01T12:00:31Z, "
            f"not {value!r:.40}"
        )

    @field_validator("ts")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("ts must carry a timezone (UTC)")
        try:
            return value.astimezone(UTC)
        except (OverflowError, ValueError):  # e.g. 9999-12-31T23:59:59-01:00 is in year 10000 in UTC
            raise ValueError(f"ts is out of range in UTC: {value.isoformat()}") from None
